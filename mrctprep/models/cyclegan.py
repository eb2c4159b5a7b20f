"""The CycleGAN of pytorch-CycleGAN-and-pix2pix (Zhu et al., 2017), as SyntheX and the GENSYN
thesis use it to make DRRs look like real radiographs: the ``resnet_9blocks`` generator and the
3-layer 70x70 PatchGAN, instance norm without affine parameters or running statistics, no
dropout, and upstream's module layout, so that its checkpoints (``latest_net_G_A.pth``) load
as they are.

Upstream's key names follow from one ``nn.Sequential`` called ``model``: the generator's
convolutions are ``model.1`` (7x7 in), ``model.4`` and ``model.7`` (down), the residual blocks
``model.10`` ... ``model.18`` (each ``conv_block.1`` and ``conv_block.5``), ``model.19`` and
``model.22`` (transposed, up) and ``model.26`` (7x7 out); the discriminator's are
``model.0``, ``.2``, ``.5``, ``.8`` and ``.11``.

>>> count_parameters(ResnetGenerator(3, 3)), count_parameters(NLayerDiscriminator(3))
(11378179, 2764737)
>>> count_parameters(ResnetGenerator()), count_parameters(NLayerDiscriminator())
(11365633, 2762689)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from mrctprep.core.errors import ResourceError
from mrctprep.models.weights import sha256_of

UPSTREAM_NGF = 64
UPSTREAM_BLOCKS = 9
DOWNSAMPLINGS = 2
#: Inputs are padded to a multiple of this (two stride-2 steps) and cropped back.
SIZE_MULTIPLE = 2**DOWNSAMPLINGS
INIT_GAIN = 0.02
LEAKY_SLOPE = 0.2
#: Images larger than this (pixels a side) run in overlapping tiles.
MAX_TILE = 1024
TILE_OVERLAP = 64
#: Keys of upstream's InstanceNorm layers that checkpoints from PyTorch before 0.4 carry and
#: that a norm without running statistics has no place for (upstream drops them on load).
_NORM_STAT_KEYS = ('running_mean', 'running_var', 'num_batches_tracked')


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _norm(channels: int) -> nn.InstanceNorm2d:
    # upstream's 'instance': no affine parameters, no running statistics; so convolutions
    # before it keep their bias
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """Reflection pad, 3x3 conv, norm, ReLU, reflection pad, 3x3 conv, norm; plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.conv_block(x)
        return out


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d2ngf, d4ngf, ``blocks`` residual blocks, u2ngf, ungf, c7s1 tanh."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        ngf: int = UPSTREAM_NGF,
        blocks: int = UPSTREAM_BLOCKS,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7),
            _norm(ngf),
            nn.ReLU(True),
        ]
        for level in range(DOWNSAMPLINGS):
            channels = ngf * 2**level
            layers += [
                nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1),
                _norm(channels * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 2**DOWNSAMPLINGS) for _ in range(blocks)]
        for level in range(DOWNSAMPLINGS, 0, -1):
            channels = ngf * 2**level
            layers += [
                nn.ConvTranspose2d(
                    channels, channels // 2, 3, stride=2, padding=1, output_padding=1
                ),
                _norm(channels // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs, stride 2 for ``layers`` steps then stride 1, LeakyReLU 0.2; with
    3 layers each output sees a 70x70 patch."""

    def __init__(self, in_channels: int = 1, ndf: int = 64, layers: int = 3) -> None:
        super().__init__()
        sequence: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE, True),
        ]
        multiple = 1
        for layer in range(1, layers + 1):
            previous, multiple = multiple, min(2**layer, 8)
            stride = 2 if layer < layers else 1
            sequence += [
                nn.Conv2d(ndf * previous, ndf * multiple, 4, stride=stride, padding=1),
                _norm(ndf * multiple),
                nn.LeakyReLU(LEAKY_SLOPE, True),
            ]
        sequence.append(nn.Conv2d(ndf * multiple, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*sequence)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def init_weights(module: nn.Module, gain: float = INIT_GAIN) -> None:
    """Upstream's 'normal' init: conv weights N(0, gain), biases 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def clean_upstream_state_dict(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A generator state dict as upstream saves it, ready for :class:`ResnetGenerator`: without
    the InstanceNorm running-statistic keys of checkpoints from PyTorch before 0.4, and without
    the ``module.`` prefix of a DataParallel network saved whole."""
    cleaned = {}
    for key, value in state.items():
        key = key.removeprefix('module.')
        if key.rpartition('.')[2] in _NORM_STAT_KEYS:
            continue
        cleaned[key] = value
    return cleaned


def generator_from_state_dict(state: Mapping[str, Any]) -> ResnetGenerator:
    """The generator that ``state`` (ours or upstream's) was saved from, weights loaded; its
    width, depth and channels read off the tensors' shapes."""
    cleaned = clean_upstream_state_dict(state)
    first = cleaned.get('model.1.weight')
    blocks = {int(m.group(1)) for k in cleaned if (m := re.match(r'model\.(\d+)\.conv_block', k))}
    if first is None or not blocks:
        raise ValueError('not a resnet generator state dict (no model.1.weight / conv_block)')
    last_index = max(int(k.split('.')[1]) for k in cleaned if k.endswith('.weight'))
    last = cleaned[f'model.{last_index}.weight']
    generator = ResnetGenerator(
        in_channels=first.shape[1],
        out_channels=last.shape[0],
        ngf=first.shape[0],
        blocks=len(blocks),
    )
    generator.load_state_dict(cleaned)
    return generator.eval()


def to_network_range(image: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    """An image min-max scaled to [-1, 1] (a constant image to -1)."""
    low, high = float(np.min(image)), float(np.max(image))
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return (2 * scaled - 1).astype(np.float32)


def translate(
    generator: ResnetGenerator, image: npt.NDArray[np.floating[Any]], *, device: str = 'cpu'
) -> npt.NDArray[np.float32]:
    """The generator's image of a 2D ``image`` of any size, in [0, 1].

    The input is min-max scaled to [-1, 1], edge-padded to a multiple of 4 (where upstream's
    test mode resizes) and cropped back; images larger than :data:`MAX_TILE` run in
    overlapping tiles blended linearly, each tile with its own instance statistics.
    """
    tensor = torch.from_numpy(to_network_range(image))[None, None].to(device)
    with torch.no_grad():
        if max(image.shape) <= MAX_TILE:
            out = _padded_forward(generator, tensor)
        else:
            out = _tiled_forward(generator, tensor)
    result: npt.NDArray[np.float32] = ((out[0, 0].float().cpu().numpy() + 1) / 2).clip(0, 1)
    return result


def _padded_forward(generator: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
    padded = functional.pad(tensor, (0, pad_w, 0, pad_h), mode='replicate')
    out: torch.Tensor = generator(padded)
    return out[..., :height, :width]


def _tiled_forward(generator: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    output = torch.zeros_like(tensor)
    weights = torch.zeros_like(tensor)
    ramp = _tile_ramp(MAX_TILE, TILE_OVERLAP, tensor.device)
    for top in _starts(height):
        for left in _starts(width):
            window = (..., slice(top, top + MAX_TILE), slice(left, left + MAX_TILE))
            tile = tensor[window]
            weight = ramp[: tile.shape[-2], None] * ramp[None, : tile.shape[-1]]
            output[window] += _padded_forward(generator, tile) * weight
            weights[window] += weight
    return output / weights


def _starts(size: int) -> list[int]:
    if size <= MAX_TILE:
        return [0]
    step = MAX_TILE - TILE_OVERLAP
    return [*range(0, size - MAX_TILE, step), size - MAX_TILE]


def _tile_ramp(length: int, overlap: int, device: torch.device) -> torch.Tensor:
    """1 inside, rising linearly over ``overlap`` pixels at both ends (never 0)."""
    position = torch.arange(length, device=device, dtype=torch.float32)
    rise = torch.minimum(position + 1, length - position) / (overlap + 1)
    return rise.clamp(max=1.0)


def load_generator(weights_file: str | Path, sha256: str, device: str) -> ResnetGenerator:
    """The generator of a weights file (ours or upstream's ``*_net_G_A.pth``), refusing a file
    whose SHA-256 changed since it was resolved."""
    path = Path(weights_file)
    actual = sha256_of(path)
    if actual != sha256:
        raise ResourceError(f'{path}: SHA-256 {actual[:16]}... changed since the run started')
    state = torch.load(path, map_location='cpu', weights_only=True)
    try:
        return generator_from_state_dict(state).to(device)
    except (ValueError, RuntimeError) as exc:  # load_state_dict's key and shape mismatches
        reason = ' '.join(str(exc).split())  # one line
        raise ResourceError(f'{path}: not a CycleGAN resnet generator ({reason})') from None
