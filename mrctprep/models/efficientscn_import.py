"""The EfficientSCN authors' TensorFlow checkpoints as state dicts of our networks.

The released SavedModels store their variables by the order of the Keras models' ``variables``
lists (``model/variables/N`` for the localization network; ``local_appearance/variables/N`` and
``spatial_configuration/variables/N`` for the SCN). For a UnetAvgLinear3D that order is: the
contracting blocks of levels 0..L-1, then the expanding blocks of levels 0..L-1 (the deepest
last), each block's two convolutions as kernel, bias; then the 1x1x1 output convolution. The
localization checkpoint's object graph names each variable (``model/unet/contracting_layers/
level0/layers/0/kernel``...), which the tests check against :func:`upstream_variables`.

The spatial configuration's U-Nets are a list in which U-Net ``k`` serves label ``(k + 1) % 5``:
upstream indexes that list with ``label - 1`` (it takes no background input), so the background
label's U-Net (the one with 5 input channels) is the last. Kernels are ``(z, y, x, in, out)`` and
become torch's ``(out, in, z, y, x)`` without flipping (both frameworks correlate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mrctprep import __version__
from mrctprep.core.errors import ResourceError
from mrctprep.models.efficientscn import (
    FLARE_LABELS,
    LOCALIZATION_MODEL,
    LocalizationNet,
    SpatialConfigurationNet,
    UnetAvgLinear3D,
)
from mrctprep.models.tf_checkpoint import (
    checkpoint_prefix,
    read_checkpoint_index,
    read_tensor,
    shard_count,
)
from mrctprep.models.weights import ModelWeights, save_weights, sha256_of

KERNEL_AXES = (4, 3, 0, 1, 2)
_VALUE = '.ATTRIBUTES/VARIABLE_VALUE'


@dataclass(frozen=True)
class UpstreamVariable:
    """One checkpointed variable: its key, its name in the authors' model, and our parameter."""

    checkpoint_key: str
    upstream_name: str
    torch_key: str


def _unet_names(
    unet: UnetAvgLinear3D, torch_prefix: str, upstream_prefix: str
) -> list[tuple[str, str]]:
    """(torch key, upstream name) of a U-Net's parameters, in upstream's variable order."""
    names = []
    for part, upstream_part in (
        ('contracting', 'contracting_layers'),
        ('expanding', 'expanding_layers'),
    ):
        for level in range(len(unet.contracting)):
            for conv, layer in (('conv0', 0), ('conv1', 2)):
                for torch_name, upstream in (('weight', 'kernel'), ('bias', 'bias')):
                    names.append(
                        (
                            f'{torch_prefix}.{part}.{level}.{conv}.{torch_name}',
                            f'{upstream_prefix}/{upstream_part}/level{level}/layers/{layer}/{upstream}',
                        )
                    )
    return names


def _numbered(scope: str, names: list[tuple[str, str]]) -> list[UpstreamVariable]:
    return [
        UpstreamVariable(f'{scope}/variables/{index}/{_VALUE}', upstream, torch_key)
        for index, (torch_key, upstream) in enumerate(names)
    ]


def upstream_variables(network: nn.Module) -> list[UpstreamVariable]:
    """Every variable of the authors' checkpoint of ``network`` (a :class:`LocalizationNet` or
    :class:`SpatialConfigurationNet`) and the parameter it becomes."""
    if isinstance(network, LocalizationNet):
        names = _unet_names(network.unet, 'unet', 'model/unet')
        names += [
            ('prediction.weight', 'model/prediction/layers/0/kernel'),
            ('prediction.bias', 'model/prediction/layers/0/bias'),
        ]
        return _numbered('model', names)
    if not isinstance(network, SpatialConfigurationNet):
        raise TypeError(f'no upstream checkpoint layout for {type(network).__name__}')
    variables = _numbered(
        'local_appearance',
        _unet_names(network.local_appearance, 'local_appearance', 'local_appearance/unet'),
    )
    for torch_name, upstream in (('weight', 'kernel'), ('bias', 'bias')):
        key = f'local_appearance/prediction/{upstream}/{_VALUE}'
        variables.append(UpstreamVariable(key, key, f'local_prediction.{torch_name}'))
    spatial: list[tuple[str, str]] = []
    for index in range(len(FLARE_LABELS)):
        label = (index + 1) % len(FLARE_LABELS)
        unet: UnetAvgLinear3D = network.spatial_unets[label][0]  # type: ignore[index]
        upstream = f'spatial_configuration/unets/{index}'
        spatial += _unet_names(unet, f'spatial_unets.{label}.0', f'{upstream}/unet_l{label}')
        spatial += [
            (f'spatial_unets.{label}.1.weight', f'{upstream}/l{label}/kernel'),
            (f'spatial_unets.{label}.1.bias', f'{upstream}/l{label}/bias'),
        ]
    return variables + _numbered('spatial_configuration', spatial)


def torch_shape_in_tensorflow(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A torch parameter's shape as TensorFlow stores it (kernels channels-last)."""
    if len(shape) != len(KERNEL_AXES):
        return shape
    return tuple(shape[KERNEL_AXES.index(axis)] for axis in range(len(shape)))


def checkpoint_state_dict(source: Path, network: nn.Module) -> dict[str, torch.Tensor]:
    """The authors' checkpoint (a SavedModel folder, its ``variables`` folder or prefix) as a
    state dict of ``network``; every variable's presence, dtype and shape is checked."""
    prefix = checkpoint_prefix(source)
    entries = read_checkpoint_index(prefix)
    shards = shard_count(prefix)
    parameters = dict(network.named_parameters())
    expected = upstream_variables(network)
    numeric = {key for key, entry in entries.items() if not key.startswith('_')}
    unknown = sorted(numeric - {variable.checkpoint_key for variable in expected})
    if unknown:
        raise ResourceError(
            f'{prefix}: not the {type(network).__name__} checkpoint: {len(unknown)} variable(s) '
            f'it does not have, e.g. {unknown[0]}'
        )
    state_dict = {}
    for variable in expected:
        wanted = torch_shape_in_tensorflow(tuple(parameters[variable.torch_key].shape))
        entry = entries.get(variable.checkpoint_key)
        if entry is None or entry.shape != wanted or entry.dtype_name != 'float32':
            found = 'missing' if entry is None else f'{entry.dtype_name} {entry.shape}'
            raise ResourceError(
                f'{prefix}: variable {variable.checkpoint_key} ({variable.upstream_name}) is '
                f'{found}, expected float32 {wanted}'
            )
        array = read_tensor(prefix, variable.checkpoint_key, entry, shards)
        if array.ndim == len(KERNEL_AXES):
            array = np.transpose(array, KERNEL_AXES)
        state_dict[variable.torch_key] = torch.from_numpy(np.ascontiguousarray(array, np.float32))
    return state_dict


def import_localization_weights(source: Path, output: Path) -> ModelWeights:
    """Convert the authors' localization SavedModel (folder) and write ``output`` (``.pt``)
    with its card, which records the checkpoint files and their SHA-256."""
    state_dict = checkpoint_state_dict(source, LocalizationNet())
    prefix = checkpoint_prefix(source)
    files = [prefix.with_name(prefix.name + '.index')]
    files += sorted(prefix.parent.glob(f'{prefix.name}.data-*'))
    provenance = {
        'converted_from': {
            'files': [{'file': path.name, 'sha256': sha256_of(path)} for path in files],
            'format': 'TensorFlow tensor bundle (SavedModel variables)',
            'layout': 'channels-last kernels (z, y, x, in, out), permuted to torch with axes '
            '(4, 3, 0, 1, 2)',
        },
        'converted_by': f'mrctprep {__version__} import-weights',
    }
    return save_weights(state_dict, output, name=LOCALIZATION_MODEL, provenance=provenance)
