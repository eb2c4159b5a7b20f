"""IGUANe's networks (Roca et al., 2025) in PyTorch: the 3D harmonization generator and the
3D PatchGAN discriminator, layer for layer as in the authors' Keras code.

Both use IGUANe's own instance normalisation, which divides by the mean *absolute* deviation
rather than the standard deviation, and which always runs in float32.

>>> generator = IguaneGenerator()
>>> count_parameters(generator), count_parameters(IguaneDiscriminator())
(6532098, 2633217)
>>> import torch
>>> with torch.no_grad():
...     generator(torch.zeros(1, 1, 16, 32, 16)).shape
torch.Size([1, 1, 16, 32, 16])
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from mrctprep.core.devices import fast_precision
from mrctprep.imaging.intensity import MEDIAN_TARGET, SIZE_MULTIPLE
from mrctprep.models.inference import Shape3D, predict_in_tiles, predict_whole_or_tiled
from mrctprep.models.memory import check_fits, inference_memory

ENCODER_CHANNELS = (16, 32, 64, 128)
BOTTLENECK_CHANNELS = 256
DISCRIMINATOR_CHANNELS = (64, 128, 256)
LEAKY_SLOPE = 0.2
#: Crops of a crop-trained generator run four at a time: about 1.6x faster than one by one on
#: a CPU, and still far smaller than a whole volume.
CROPS_PER_CALL = 4


class MeanAbsoluteDeviationNorm(nn.Module):
    """Per sample and channel: ``scale * (x - mean) / (mean |x - mean| + 1e-3) + offset``."""

    epsilon = 1e-3

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.offset = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: the statistics of a whole volume overflow float16
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = x.float()
            centred = x32 - x32.mean(dim=(2, 3, 4), keepdim=True)
            deviation = centred.abs().mean(dim=(2, 3, 4), keepdim=True)
            shape = (1, -1, 1, 1, 1)
            out = self.scale.view(shape) * centred / (deviation + self.epsilon)
            return (out + self.offset.view(shape)).to(x.dtype)


class ConvReluNorm(nn.Sequential):
    """IGUANe's block: convolution, then ReLU, then the norm (norm *after* the activation)."""

    def __init__(self, conv: nn.Module, channels: int) -> None:
        super().__init__(conv, nn.ReLU(), MeanAbsoluteDeviationNorm(channels))


def _conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Conv3d:
    # k3 s1 pad 1 and k4 s2 pad 1 reproduce Keras' "same" padding exactly
    conv = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=1 if kernel > 1 else 0)
    _glorot(conv)
    return conv


def _up(in_channels: int, out_channels: int) -> nn.ConvTranspose3d:
    conv = nn.ConvTranspose3d(in_channels, out_channels, 4, 2, padding=1)
    _glorot(conv)
    return conv


def _glorot(conv: nn.Conv3d | nn.ConvTranspose3d) -> None:
    """Keras' default initialisation: Glorot-uniform kernels, zero biases."""
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class IguaneGenerator(nn.Module):
    """3D U-Net 16-32-64-128-256 with a residual output: ``tanh(head) + input``.

    Input and output are ``(N, 1, D, H, W)`` in IGUANe's network space (brain median 0,
    background 0), each of D, H, W divisible by 16.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        in_channels = 1
        for channels in ENCODER_CHANNELS:
            self.encoders.append(ConvReluNorm(_conv(in_channels, channels), channels))
            self.downs.append(ConvReluNorm(_conv(channels, channels, 4, 2), channels))
            in_channels = channels
        bottleneck = BOTTLENECK_CHANNELS
        self.bottleneck = ConvReluNorm(_conv(in_channels, bottleneck), bottleneck)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        in_channels = BOTTLENECK_CHANNELS
        for channels in reversed(ENCODER_CHANNELS):
            self.ups.append(ConvReluNorm(_up(in_channels, channels), channels))
            self.decoders.append(ConvReluNorm(_conv(2 * channels, channels), channels))
            in_channels = channels
        self.head = _conv(in_channels + 1, 1, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(size % SIZE_MULTIPLE for size in x.shape[2:]):
            raise ValueError(
                f'IGUANe needs volume sizes divisible by {SIZE_MULTIPLE}, got {tuple(x.shape[2:])}'
            )
        skips: list[torch.Tensor] = []
        features = x
        for encode, down in zip(self.encoders, self.downs, strict=True):
            features = encode(features)
            skips.append(features)
            features = down(features)
        features = self.bottleneck(features)
        for up, decode in zip(self.ups, self.decoders, strict=True):
            features = decode(torch.cat([up(features), skips.pop()], dim=1))
        residual = torch.tanh(self.head(torch.cat([features, x], dim=1)))
        return residual.float() + x.float()


class IguaneDiscriminator(nn.Module):
    """3D PatchGAN with a linear (least-squares GAN) output; 160x192x160 -> 20x24x20 patches.

    The input is padded with -1, a value that brain and background (0) never take, so that
    the first, unpadded convolution sees where the volume ends.
    """

    def __init__(self) -> None:
        super().__init__()
        first, second, third = DISCRIMINATOR_CHANNELS
        self.layers = nn.Sequential(
            nn.Conv3d(1, first, 4, 2, padding=0, bias=False),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv3d(first, second, 4, 2, padding=1, bias=False),
            MeanAbsoluteDeviationNorm(second),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv3d(second, third, 4, 2, padding=1, bias=False),
            MeanAbsoluteDeviationNorm(third),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv3d(third, 1, 3, 1, padding=1),
        )
        for layer in self.layers:
            if isinstance(layer, nn.Conv3d):
                _glorot(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = functional.pad(x, (1,) * 6, mode='constant', value=-1.0)
        patches: torch.Tensor = self.layers(padded)
        return patches.float()


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def to_network_space(
    data: npt.NDArray[np.floating[Any]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """IGUANe's input convention: ``I / 500 - 1`` in the brain, 0 outside; and the brain mask.

    ``data`` is a skull-stripped image whose brain median is 500 (background exactly 0).
    """
    mask = data > 0
    network_input = np.where(mask, data / MEDIAN_TARGET - 1, 0).astype(np.float32)
    return network_input, mask


def from_network_space(
    output: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float32]:
    """``(G(v) + 1) * 500`` in the brain, 0 outside, never negative."""
    return np.where(mask, np.clip((output + 1) * MEDIAN_TARGET, 0, None), 0).astype(np.float32)


def harmonize_volume(
    data: npt.NDArray[np.floating[Any]],
    generator: IguaneGenerator,
    device: str,
    *,
    tile: Shape3D | None = None,
) -> npt.NDArray[np.float32]:
    """The generator applied to a median-500 brain volume, in IGUANe's intensity convention.

    Volumes whose sizes are not multiples of 16 are padded with background and cropped back.
    ``tile`` is the crop size a generator was trained on (its card's ``trained.PatchSize``):
    its instance norms learnt the statistics of such crops, not of a whole volume that is half
    background, so it runs on crops of that size again, overlapping by half and
    Gaussian-blended. Crops without brain come out as background without running the network.
    """
    network_input, mask = to_network_space(data)
    padded_shape = [-(-size // SIZE_MULTIPLE) * SIZE_MULTIPLE for size in data.shape]
    padded = np.zeros(padded_shape, np.float32)
    padded[tuple(slice(0, n) for n in data.shape)] = network_input
    volume = torch.from_numpy(padded[None, None]).to(device)

    def generate_brain(crops: torch.Tensor) -> torch.Tensor:
        output = torch.zeros_like(crops)
        with_brain = crops.flatten(1).any(dim=1)
        if with_brain.any():
            output[with_brain] = generator(crops[with_brain]).to(output.dtype)
        return output

    if tile is None:
        memory = inference_memory(generator, device=device)
    else:
        check_fits(
            inference_memory(generator, device=device),
            voxels=CROPS_PER_CALL * int(np.prod(tile)),
            device=device,
            what=f'IGUANe inference on crops of {tile}',
        )
    with torch.inference_mode(), fast_precision(device):
        if tile is None:
            output = predict_whole_or_tiled(
                generator, volume, multiple=SIZE_MULTIPLE, memory=memory
            )
        else:
            output = predict_in_tiles(
                generate_brain, volume, tile=tile, overlap=0.5, tiles_per_call=CROPS_PER_CALL
            )
    unpadded = output[0, 0][tuple(slice(0, n) for n in data.shape)]
    return from_network_space(unpadded.float().numpy(), mask)


@cache
def load_generator(weights_file: str, sha256: str, device: str) -> IguaneGenerator:
    """A generator with these (already verified) weights, built once per process and device;
    ``sha256`` is part of the key so that replaced weights are never served from the cache."""
    generator = IguaneGenerator()
    generator.load_state_dict(torch.load(weights_file, map_location='cpu', weights_only=True))
    return generator.to(device).eval()
