"""EfficientSCN (Thaler et al., FLARE 2021) in PyTorch: the localization network and the
SpatialConfiguration-Net, layer for layer as the authors' TensorFlow code builds them.

Both stages are made of one block, :class:`UnetAvgLinear3D`: a U-Net whose every level has the
same number of filters, average pooling down, linear upsampling up and concatenated skips. The
networks are channels-first on volumes ordered as the authors' arrays are, ``(N, C, z, y, x)``.

>>> count_parameters(LocalizationNet()), count_parameters(SpatialConfigurationNet())
(637474, 1270090)
>>> small = SpatialConfigurationNet(filters=4, spatial_filters=2)
>>> with torch.no_grad():
...     tuple(small(torch.zeros(1, 1, 32, 32, 32)).shape)
(1, 5, 32, 32, 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

LEAKY_SLOPE = 0.1
DROPOUT = 0.1
#: The names of the two stages' weights (cards, files, --weights NAME=FILE).
LOCALIZATION_MODEL = 'efficientscn-localization'
SEGMENTATION_MODEL = 'efficientscn-segmentation'
#: FLARE21's classes, in the networks' channel order.
FLARE_LABELS = ('background', 'liver', 'kidneys', 'spleen', 'pancreas')
LOCALIZATION_LEVELS, LOCALIZATION_FILTERS = 5, 32
LOCAL_APPEARANCE_LEVELS, LOCAL_APPEARANCE_FILTERS = 5, 32
SPATIAL_LEVELS, SPATIAL_FILTERS = 4, 16
SPATIAL_DOWNSAMPLING = 4
LOCAL_CHANNEL_DROPOUT, IMAGE_CHANNEL_DROPOUT = 0.25, 0.5
SALT_PEPPER_RATE, SALT_PEPPER_SCALES = 0.01, (1, 2, 4, 8)
#: The exported model's epsilon of the final renormalisation (training used 1e-8).
RENORMALISATION_EPSILON = 1e-5


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv3d:
    """A 'same' convolution with bias, initialised as upstream's He initializer: truncated
    normal, variance 2 / fan-in; zero bias."""
    conv = nn.Conv3d(in_channels, out_channels, kernel, padding=kernel // 2)
    fan_in = in_channels * kernel**3
    # Keras' truncated normal keeps +-2 std; its std is corrected by 0.8796 for the truncation
    std = (2.0 / fan_in) ** 0.5 / 0.87962566103423978
    nn.init.trunc_normal_(conv.weight, std=std, a=-2 * std, b=2 * std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class ConvBlock(nn.Module):
    """Two 3x3x3 convolutions, each followed by LeakyReLU(0.1) and dropout."""

    def __init__(self, in_channels: int, filters: int, dropout: float) -> None:
        super().__init__()
        self.conv0 = _conv(in_channels, filters, 3)
        self.conv1 = _conv(filters, filters, 3)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(functional.leaky_relu(self.conv0(x), LEAKY_SLOPE))
        out: torch.Tensor = self.dropout(functional.leaky_relu(self.conv1(x), LEAKY_SLOPE))
        return out


def upsample_separable(x: torch.Tensor, factor: int, cubic: bool) -> torch.Tensor:
    """Integer upsampling of the last three axes, one axis at a time, as upstream's layers do:
    each output sample sits at the centre of its sub-voxel (half-voxel aligned), taps beyond
    the edge repeat the edge voxel. Linear (triangle kernel) or cubic (Keys, a = -0.5)."""
    support = 2 if cubic else 1
    for axis in (2, 3, 4):
        padded = torch.cat(
            [x.narrow(axis, 0, 1)] * support
            + [x]
            + [x.narrow(axis, x.shape[axis] - 1, 1)] * support,
            dim=axis,
        )
        length = x.shape[axis]
        phases = []
        for phase in range(factor):
            position = (1 - factor + 2 * phase) / (2 * factor)
            # the tap ``offset`` voxels before this one, weighted by the kernel at its distance
            taps = [
                padded.narrow(axis, support - offset, length) * weight
                for offset in range(-support, support + 1)
                if (weight := _kernel_weight(position + offset, cubic)) != 0
            ]
            phases.append(torch.stack(taps).sum(dim=0))
        shape = list(x.shape)
        shape[axis] *= factor
        x = torch.stack(phases, dim=axis + 1).reshape(shape)
    return x


def _kernel_weight(distance: float, cubic: bool) -> float:
    """The interpolation kernel at ``distance`` from a sample: triangle, or Keys' cubic."""
    d = abs(distance)
    if not cubic:
        return max(0.0, 1.0 - d)
    a = -0.5
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    if d < 2:
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return 0.0


class UnetAvgLinear3D(nn.Module):
    """Constant-width U-Net: ``levels`` levels of ``filters`` channels, average pooling 2x2x2
    down, linear x2 up, concat(skip, up); the deepest level has an expanding block too."""

    def __init__(self, in_channels: int, filters: int, levels: int, dropout: float = DROPOUT):
        super().__init__()
        self.contracting = nn.ModuleList(
            ConvBlock(in_channels if level == 0 else filters, filters, dropout)
            for level in range(levels)
        )
        self.expanding = nn.ModuleList(
            ConvBlock(filters if level == levels - 1 else 2 * filters, filters, dropout)
            for level in range(levels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.contracting):
            x = block(x)
            skips.append(x)
            if level < len(self.contracting) - 1:
                x = functional.avg_pool3d(x, 2)
        x = self.expanding[-1](skips[-1])
        for level in reversed(range(len(self.expanding) - 1)):
            up = upsample_separable(x, 2, cubic=False)
            x = self.expanding[level](torch.cat([skips[level], up], dim=1))
        return x


class LocalizationNet(nn.Module):
    """Stage 1: UnetAvgLinear3D(5 x 32) and a 1x1x1 convolution to (background, foreground)
    logits, on the whole scan at 6 mm."""

    def __init__(
        self, filters: int = LOCALIZATION_FILTERS, levels: int = LOCALIZATION_LEVELS
    ) -> None:
        super().__init__()
        self.unet = UnetAvgLinear3D(1, filters, levels)
        self.prediction = _conv(filters, 2, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.prediction(self.unet(image))
        return logits


@dataclass(frozen=True)
class ScnOutputs:
    """The SCN's three outputs, all ``(N, 5, z, y, x)`` float32: the local appearance and
    spatial configuration logits (for the BCE terms), and the fused probabilities."""

    local_logits: torch.Tensor
    spatial_logits: torch.Tensor
    probabilities: torch.Tensor


class SpatialConfigurationNet(nn.Module):
    """Stage 2: local appearance U-Net (5 x 32 -> 5 sigmoid channels) and, at 1/4 resolution,
    one small U-Net (4 x 16) per label fed by the image and the other organs' probabilities;
    the two are fused by the spatial branch's certainty (:func:`fuse`).

    ``forward`` returns the fused probabilities; :meth:`outputs` all three outputs.
    """

    def __init__(
        self,
        filters: int = LOCAL_APPEARANCE_FILTERS,
        spatial_filters: int = SPATIAL_FILTERS,
        levels: int = LOCAL_APPEARANCE_LEVELS,
        spatial_levels: int = SPATIAL_LEVELS,
    ) -> None:
        super().__init__()
        labels = len(FLARE_LABELS)
        self.local_appearance = UnetAvgLinear3D(1, filters, levels)
        self.local_prediction = _conv(filters, labels, 1)
        # label 0 sees all four organs, an organ the three others; both also see the image
        self.spatial_unets = nn.ModuleList(
            nn.Sequential(
                UnetAvgLinear3D(
                    labels if label == 0 else labels - 1, spatial_filters, spatial_levels
                ),
                _conv(spatial_filters, 1, 1),
            )
            for label in range(labels)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.outputs(image).probabilities

    def outputs(self, image: torch.Tensor) -> ScnOutputs:
        local_logits = self.local_prediction(self.local_appearance(image))
        # the spatial branch learns from the local probabilities without changing them
        local = torch.sigmoid(local_logits).detach()
        pooled = functional.avg_pool3d(local, SPATIAL_DOWNSAMPLING)
        pooled_image = functional.avg_pool3d(image, SPATIAL_DOWNSAMPLING)
        if self.training:
            pooled = salt_and_pepper(pooled, SALT_PEPPER_RATE, SALT_PEPPER_SCALES)
            pooled = _whole_channel_dropout(pooled, LOCAL_CHANNEL_DROPOUT)
            pooled = _whole_channel_dropout(pooled, LOCAL_CHANNEL_DROPOUT)
            pooled_image = _whole_channel_dropout(pooled_image, IMAGE_CHANNEL_DROPOUT)
        organs = pooled[:, 1:]
        coarse = []
        for label, unet in enumerate(self.spatial_unets):
            others = [organs[:, j : j + 1] for j in range(organs.shape[1]) if j + 1 != label]
            coarse.append(unet(torch.cat([pooled_image, *others], dim=1)))
        spatial_logits = upsample_separable(
            torch.cat(coarse, dim=1), SPATIAL_DOWNSAMPLING, cubic=True
        )
        local_logits, spatial_logits = local_logits.float(), spatial_logits.float()
        return ScnOutputs(local_logits, spatial_logits, fuse(local_logits, spatial_logits))


def fuse(
    local_logits: torch.Tensor,
    spatial_logits: torch.Tensor,
    epsilon: float = RENORMALISATION_EPSILON,
) -> torch.Tensor:
    """Where the spatial branch is uncertain (binary entropy near 1 bit) trust the local
    appearance, elsewhere the spatial configuration; then renormalise over the channels."""
    local, spatial = torch.sigmoid(local_logits.float()), torch.sigmoid(spatial_logits.float())
    uncertainty = binary_entropy_bits(spatial_logits.float())
    fused = local * uncertainty + spatial * (1 - uncertainty)
    return fused / (fused.sum(dim=1, keepdim=True) + epsilon)


def binary_entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """H(sigmoid(x)) / ln 2, in [0, 1], from the logits: ``p softplus(-x) + (1 - p)
    softplus(x)`` stays finite, and so does its gradient, where the sigmoid saturates at
    exactly 0 or 1 (``p log p`` there has an infinite derivative times zero: NaN)."""
    p = torch.sigmoid(logits)
    entropy = p * functional.softplus(-logits) + (1 - p) * functional.softplus(logits)
    bits: torch.Tensor = entropy / math.log(2.0)
    return bits


def salt_and_pepper(x: torch.Tensor, rate: float, scales: tuple[int, ...]) -> torch.Tensor:
    """Training noise on probability maps: at each scale, a uniform field at that coarse
    resolution forces values to 0 (< rate/2) or 1 (>= 1 - rate/2), its masks linearly
    upsampled back (so coarse scales force blobs)."""
    for scale in scales:
        coarse = [size // scale for size in x.shape[2:]]
        field = torch.rand(x.shape[0], x.shape[1], *coarse, device=x.device, dtype=x.dtype)
        zeros = upsample_separable((field < rate / 2).to(x.dtype), scale, cubic=False)
        ones = upsample_separable((field >= 1 - rate / 2).to(x.dtype), scale, cubic=False)
        x = (1 - (1 - x) * (1 - ones)) * (1 - zeros)
    return x


def _whole_channel_dropout(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Keras Dropout with noise shape (1, C, 1, 1, 1): whole channels off, the rest scaled."""
    keep = (torch.rand(1, x.shape[1], 1, 1, 1, device=x.device) >= rate).to(x.dtype)
    return x * keep / (1 - rate)
