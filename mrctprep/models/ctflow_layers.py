"""The invertible layers of SRFlow's conditional flow (Lugmayr et al., 2020), after Glow.

Every layer maps ``(h, logdet)`` forward and back; ``logdet`` is a per-sample tensor that
each layer adds its log|det J| to. Parameter names follow upstream (``bias``/``logs`` in
ActNorm, ``weight`` in the 1x1 convolution, ``fAffine``/``fFeatures`` in the coupling,
``conv`` in the split) so that state dicts line up key for key.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

#: SRFlow's affine scale: ``sigmoid(s + 2) + 1e-4`` starts near 0.88 and stays positive.
SCALE_OFFSET = 2.0
AFFINE_EPS = 1e-4
#: Glow's zero-initialised convolution multiplies its output by ``exp(3 * logs)``.
ZERO_CONV_LOGSCALE_FACTOR = 3.0
#: Standard deviation of the coupling networks' hidden convolutions at initialisation.
CONV_INIT_STD = 0.05
ACTNORM_EPS = 1e-6


def pixels(h: torch.Tensor) -> int:
    return int(h.shape[-2] * h.shape[-1])


class ActNorm(nn.Module):
    """Per-channel affine ``(h + bias) * exp(logs)``, initialised from the first batch.

    The data-dependent initialisation (Glow) runs on the first forward pass in training mode:
    it sets ``bias`` and ``logs`` so that this batch leaves with zero mean and unit variance
    per channel. ``initialized`` is a buffer so that saved weights keep it.
    """

    initialized: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer('initialized', torch.tensor(False))

    @torch.no_grad()
    def initialize(self, h: torch.Tensor) -> None:
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        variance = ((h - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        self.bias.copy_(-mean)
        self.logs.copy_(torch.log(1.0 / (variance.sqrt() + ACTNORM_EPS)))
        self.initialized.fill_(True)

    def forward(
        self, h: torch.Tensor, logdet: torch.Tensor, reverse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(h)
        change = self.logs.sum() * pixels(h)
        if reverse:
            return h * torch.exp(-self.logs) - self.bias, logdet - change
        return (h + self.bias) * torch.exp(self.logs), logdet + change

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """The forward map alone, for the ActNorm inside the coupling networks."""
        out, _ = self(h, h.new_zeros(h.shape[0]))
        normalized: torch.Tensor = out
        return normalized


class InvertibleConv1x1(nn.Module):
    """A full CxC channel mixing, initialised as a random rotation (no LU decomposition)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        rotation, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(rotation)

    def forward(
        self, h: torch.Tensor, logdet: torch.Tensor, reverse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        change = torch.linalg.slogdet(self.weight)[1] * pixels(h)
        channels = self.weight.shape[0]
        if reverse:
            # inverted in float64: the round trip must hold to float32's precision
            inverse = torch.linalg.inv(self.weight.double()).to(self.weight.dtype)
            return functional.conv2d(h, inverse.view(channels, channels, 1, 1)), logdet - change
        return functional.conv2d(h, self.weight.view(channels, channels, 1, 1)), logdet + change


class ConvActNorm(nn.Conv2d):
    """Glow's hidden convolution: no bias, weights N(0, 0.05), then ActNorm ("same" padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        nn.init.normal_(self.weight, 0.0, CONV_INIT_STD)
        self.actnorm = ActNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actnorm.normalize(super().forward(x))


class ZeroConv(nn.Conv2d):
    """Glow's Conv2dZeros: a 3x3 convolution that starts at zero, scaled by ``exp(3 logs)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.get_parameter('bias'))
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.exp(self.logs * ZERO_CONV_LOGSCALE_FACTOR)


def coupling_network(in_channels: int, out_channels: int, hidden: int) -> nn.Sequential:
    """3x3 conv + ActNorm, ReLU, 1x1 conv + ActNorm, ReLU, zero-initialised 3x3 conv."""
    return nn.Sequential(
        ConvActNorm(in_channels, hidden, 3),
        nn.ReLU(),
        ConvActNorm(hidden, hidden, 1),
        nn.ReLU(),
        ZeroConv(hidden, out_channels),
    )


def shift_and_scale(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's "cross" split: even channels shift, odd channels the (bounded) scale."""
    return raw[:, 0::2], torch.sigmoid(raw[:, 1::2] + SCALE_OFFSET) + AFFINE_EPS


class ConditionalAffineCoupling(nn.Module):
    """SRFlow's CondAffineSeparatedAndCond.

    First an affine of all channels computed from the conditioning alone (``fFeatures``), then
    an affine coupling of the second half computed from the first half and the conditioning
    (``fAffine``). Both scales are ``sigmoid(s + 2) + 1e-4``; the inverse undoes them in the
    opposite order.
    """

    def __init__(self, channels: int, condition_channels: int, hidden: int) -> None:
        super().__init__()
        self.passive = channels // 2
        active = channels - self.passive
        self.fAffine = coupling_network(self.passive + condition_channels, 2 * active, hidden)
        self.fFeatures = coupling_network(condition_channels, 2 * channels, hidden)

    def forward(
        self,
        h: torch.Tensor,
        logdet: torch.Tensor,
        condition: torch.Tensor,
        reverse: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feature_shift, feature_scale = shift_and_scale(self.fFeatures(condition))
        if not reverse:
            h = (h + feature_shift) * feature_scale
            logdet = logdet + _sum_log(feature_scale)
        passive, active = h[:, : self.passive], h[:, self.passive :]
        shift, scale = shift_and_scale(self.fAffine(torch.cat([passive, condition], 1)))
        if reverse:
            active = active / scale - shift
            h = torch.cat([passive, active], 1) / feature_scale - feature_shift
            return h, logdet - _sum_log(scale) - _sum_log(feature_scale)
        active = (active + shift) * scale
        return torch.cat([passive, active], 1), logdet + _sum_log(scale)


def _sum_log(scale: torch.Tensor) -> torch.Tensor:
    return torch.log(scale).sum(dim=(1, 2, 3))


class FlowStep(nn.Module):
    """ActNorm, invertible 1x1 convolution and, unless a transition step, the coupling."""

    def __init__(self, channels: int, condition_channels: int | None, hidden: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvertibleConv1x1(channels)
        self.affine = (
            None
            if condition_channels is None
            else ConditionalAffineCoupling(channels, condition_channels, hidden)
        )

    def forward(
        self,
        h: torch.Tensor,
        logdet: torch.Tensor,
        condition: torch.Tensor,
        reverse: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if reverse:
            if self.affine is not None:
                h, logdet = self.affine(h, logdet, condition, reverse=True)
            h, logdet = self.invconv(h, logdet, reverse=True)
            h, logdet = self.actnorm(h, logdet, reverse=True)
            return h, logdet
        h, logdet = self.actnorm(h, logdet)
        h, logdet = self.invconv(h, logdet)
        if self.affine is not None:
            h, logdet = self.affine(h, logdet, condition)
        return h, logdet


def squeeze(h: torch.Tensor) -> torch.Tensor:
    """2x2 space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2) in Glow's channel order."""
    b, c, height, width = h.shape
    h = h.view(b, c, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return h.reshape(b, c * 4, height // 2, width // 2)


def unsqueeze(h: torch.Tensor) -> torch.Tensor:
    b, c, height, width = h.shape
    h = h.view(b, c // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
    return h.reshape(b, c // 4, height * 2, width * 2)


class Split(nn.Module):
    """Keeps the first half of the channels and factors the second half out as a latent.

    The second half is modelled as N(mean, exp(logs)) with ``[mean, logs]`` a zero-initialised
    convolution of the kept half (not conditioned on the encoder). The latent is the
    standardised residual, so the layer's log|det J| is ``-sum(logs)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.kept = channels // 2
        self.conv = ZeroConv(self.kept, 2 * (channels - self.kept))

    def prior(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.conv(kept)
        return raw[:, 0::2], raw[:, 1::2]

    def split(
        self, h: torch.Tensor, logdet: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the kept half, the latent and the updated log-determinant."""
        kept, factored = h[:, : self.kept], h[:, self.kept :]
        mean, logs = self.prior(kept)
        latent = (factored - mean) * torch.exp(-logs)
        return kept, latent, logdet - logs.sum(dim=(1, 2, 3))

    def merge(self, kept: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        mean, logs = self.prior(kept)
        return torch.cat([kept, mean + latent * torch.exp(logs)], 1)


def standard_normal_log_density(latent: torch.Tensor) -> torch.Tensor:
    """Per-sample log N(latent; 0, I)."""
    return -0.5 * (latent**2 + math.log(2 * math.pi)).sum(dim=(1, 2, 3))
