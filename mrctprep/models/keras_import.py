"""The IGUANe authors' Keras weights (``.h5``) as a state dict of our PyTorch generator.

The authors trained with TensorFlow 2.12, whose Keras 2 writes HDF5 weights like this
(``model.save_weights('x.h5')``; ``model.save('x.h5')`` nests the same under ``model_weights``):
the attribute ``layer_names`` lists the model's layers in order, and each layer's group lists
its datasets in the attribute ``weight_names``, in the layer's own order. IGUANe's generator
(``harmonization/model_architectures.py``) is a functional model whose layers with weights
are 18 ``Sequential`` blocks, e.g. group ``sequential_3`` with ``conv3d_3/kernel:0``,
``conv3d_3/bias:0``, ``instance_normalization_3/scale:0``, ``instance_normalization_3/offset:0``
(Conv3D or Conv3DTranspose, ReLU, the authors' InstanceNormalization); the head is Conv3D + tanh.
Keras loads such a file by layer order, not by name (the numbers in the names depend on how many
layers the training session had built before), and so does this importer.

Kernels are channels-last: Conv3D ``(D, H, W, in, out)``, Conv3DTranspose ``(D, H, W, out, in)``.
Both become torch's layout (``(out, in, D, H, W)`` and ``(in, out, D, H, W)``) by the same axis
permutation, without flipping: both frameworks' transposed convolution is the adjoint of their
(unflipped) correlation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from mrctprep import __version__
from mrctprep.core.errors import ResourceError
from mrctprep.models.iguane import IguaneGenerator, MeanAbsoluteDeviationNorm
from mrctprep.models.weights import ModelWeights, save_weights, sha256_of

#: Keras kernel axes -> torch weight axes, for Conv3D and Conv3DTranspose alike.
KERNEL_AXES = (4, 3, 0, 1, 2)
# Keras' default layer names are the snake-cased class name plus a session-wide counter.
_KERAS_LAYER = {
    nn.Conv3d: 'conv3d',
    nn.ConvTranspose3d: 'conv3d_transpose',
    MeanAbsoluteDeviationNorm: 'instance_normalization',
}
_KERAS_WEIGHT = {'weight': 'kernel'}
#: A Keras layer's weights by name, in the layer's order; dtypes as the file stores them.
KerasArrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class KerasWeight:
    """One weight as the Keras generator holds it, and the torch parameter it becomes."""

    layer: str
    weight: str
    shape: tuple[int, ...]
    torch_key: str

    @property
    def is_kernel(self) -> bool:
        return self.weight == 'kernel'


def read_keras_weights(h5_file: Path) -> list[tuple[str, KerasArrays]]:
    """The layers of a Keras 2 HDF5 weights (or whole-model) file that hold weights, in the
    file's order, each with its weights by name (``conv3d_3/kernel:0``) in the layer's order.
    """
    try:
        with h5py.File(h5_file, 'r') as h5:
            root = _weights_root(h5, h5_file)
            layers = []
            for name in _string_list(root, 'layer_names'):
                group = root[name]
                weight_names = _string_list(group, 'weight_names')
                if weight_names:
                    layers.append((name, {w: np.asarray(group[w]) for w in weight_names}))
            return layers
    except (OSError, KeyError) as exc:
        # h5py's messages are one line: missing file, not HDF5, truncated, dangling name
        raise ResourceError(f'{h5_file}: not a readable Keras HDF5 file ({exc})') from exc


def _weights_root(h5: h5py.File, h5_file: Path) -> h5py.Group:
    if _has_list(h5, 'layer_names'):
        return h5
    if 'model_weights' in h5 and _has_list(h5['model_weights'], 'layer_names'):
        return h5['model_weights']
    raise ResourceError(
        f'{h5_file}: no Keras 2 weights in it (no layer_names attribute at its root or in '
        'model_weights); give the file that Keras 2 save_weights or save wrote'
    )


def _has_list(group: h5py.Group, name: str) -> bool:
    return name in group.attrs or f'{name}0' in group.attrs


def _string_list(group: h5py.Group, name: str) -> list[str]:
    """An attribute list as Keras writes it: split into ``name0``, ``name1``... when it
    would not fit in an HDF5 object header (64 KiB)."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f'{name}{len(chunks)}' in group.attrs:
            chunks.append(group.attrs[f'{name}{len(chunks)}'])
    return [v.decode() if isinstance(v, bytes) else str(v) for chunk in chunks for v in chunk]


def generator_keras_layers(generator: IguaneGenerator) -> list[tuple[str, list[KerasWeight]]]:
    """The generator's blocks in the order of the Keras model's layers, each with the weights
    its Keras layer holds (kernel, bias, then the norm's scale and offset)."""
    blocks = []
    for index in range(len(generator.encoders)):
        blocks += [f'encoders.{index}', f'downs.{index}']
    blocks.append('bottleneck')
    for index in range(len(generator.ups)):
        blocks += [f'ups.{index}', f'decoders.{index}']
    blocks.append('head')
    layers = []
    for block in blocks:
        weights = []
        for module_name, module in generator.get_submodule(block).named_modules(prefix=block):
            for name, parameter in module.named_parameters(recurse=False):
                shape = tuple(parameter.shape)
                if parameter.dim() == len(KERNEL_AXES):
                    shape = tuple(shape[KERNEL_AXES.index(axis)] for axis in range(len(shape)))
                weights.append(
                    KerasWeight(
                        layer=_KERAS_LAYER[type(module)],
                        weight=_KERAS_WEIGHT.get(name, name),
                        shape=shape,
                        torch_key=f'{module_name}.{name}',
                    )
                )
        layers.append((block, weights))
    return layers


def keras_generator_state_dict(h5_file: Path) -> dict[str, torch.Tensor]:
    """The authors' Keras generator weights as an :class:`IguaneGenerator` state dict.

    Every layer's weight names, types and shapes are checked against the generator; the first
    difference raises :class:`ResourceError` naming the file and the layer.
    """
    layers = read_keras_weights(h5_file)
    generator = IguaneGenerator()
    expected = generator_keras_layers(generator)
    converted = {}
    # unequal lengths are reported below, after the layers both have
    pairs = zip(layers, expected, strict=False)
    for index, ((name, arrays), (block, weights)) in enumerate(pairs):
        problem = _mismatch(arrays, weights)
        if problem:
            detail = f"layer #{index} '{name}' (the generator's {block}): {problem}"
            raise _not_iguane(h5_file, detail, len(layers), len(expected))
        for array, weight in zip(arrays.values(), weights, strict=True):
            value = np.transpose(array, KERNEL_AXES) if weight.is_kernel else array
            converted[weight.torch_key] = torch.from_numpy(np.array(value, dtype=np.float32))
    if len(layers) < len(expected):
        block = expected[len(layers)][0]
        detail = f"layer #{len(layers)} (the generator's {block}) is missing"
        raise _not_iguane(h5_file, detail, len(layers), len(expected))
    if len(layers) > len(expected):
        name = layers[len(expected)][0]
        detail = f"layer #{len(expected)} '{name}' is one too many"
        raise _not_iguane(h5_file, detail, len(layers), len(expected))
    return {key: converted[key] for key in generator.state_dict()}


def _mismatch(arrays: KerasArrays, weights: list[KerasWeight]) -> str | None:
    if len(arrays) != len(weights):
        wanted = ', '.join(f'{w.layer}/{w.weight}' for w in weights)
        return f'weights {", ".join(arrays)}, expected {wanted}'
    for (name, array), weight in zip(arrays.items(), weights, strict=True):
        # 'conv3d_12/kernel:0' -> ('conv3d', 'kernel'), whatever the layer's number
        *_, layer, variable = ['', *name.split('/')]
        if (re.sub(r'_\d+$', '', layer), variable.split(':')[0]) != (weight.layer, weight.weight):
            return f'{name} where a {weight.layer} {weight.weight} belongs'
        if array.shape != weight.shape or not np.issubdtype(array.dtype, np.floating):
            return f'{name} is {array.dtype} {array.shape}, expected float {weight.shape}'
    return None


def _not_iguane(h5_file: Path, detail: str, found: int, expected: int) -> ResourceError:
    counts = f' ({found} layers with weights, the generator has {expected})'
    return ResourceError(
        f'{h5_file}: not the IGUANe generator in Keras layout: {detail}'
        + (counts if found != expected else '')
    )


def import_keras_weights(h5_file: Path, output: Path) -> ModelWeights:
    """Convert the authors' ``.h5`` generator weights and write ``output`` (``.pt``) with its
    card, which records the source file and its SHA-256."""
    state_dict = keras_generator_state_dict(h5_file)
    provenance = {
        'converted_from': {
            'file': h5_file.name,
            'sha256': sha256_of(h5_file),
            'format': 'Keras HDF5',
            'layout': 'channels-last kernels, permuted to torch with axes (4, 3, 0, 1, 2)',
        },
        'converted_by': f'mrctprep {__version__} import-weights',
    }
    return save_weights(state_dict, output, name='iguane', provenance=provenance)
