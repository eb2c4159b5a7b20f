"""CTFlow (Wei, Yadav, Hsu, MICCAI 2023): SRFlow's conditional normalizing flow at scale 1,
mapping a CT slice of one reconstruction kernel/dose onto a reference reconstruction.

The flow models p(reference | source) with L = 3 levels. Each level squeezes 2x2, runs two
transition steps (ActNorm, invertible 1x1 convolution) and K conditional steps (plus the
affine coupling conditioned on the RRDB encoder's map at that level's resolution), and the
first L - 1 levels split half of their channels off as a latent with a learnt Gaussian prior.
For a 1 x H x W slice the latents are 2 x H/2 x W/2, 4 x H/4 x W/4 and 16 x H/8 x W/8.

Intensities follow upstream: HU + 1024 clipped to [0, 1500] and divided by 1500, i.e. the
window [-1024, 476] HU onto [0, 1] (upstream's 16-bit PNGs store HU + 1024).

Layer indices follow upstream's flat ``flowUpsamplerNet.layers`` list (a squeeze, the
transition steps, the K steps and the split of each level in turn), and the two halves are
named ``RRDB`` and ``flowUpsamplerNet`` as upstream's SRFlowNet names them, so that a
released state dict would map key for key (upstream's unused ``flowUpsamplerNet.f``,
``RRDB.upconv1`` and ``RRDB.upconv2`` excepted).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mrctprep.models.ctflow_encoder import RRDBNet
from mrctprep.models.ctflow_layers import (
    FlowStep,
    Split,
    squeeze,
    standard_normal_log_density,
    unsqueeze,
)

#: Upstream's intensity convention: network value = clip(HU + 1024, 0, 1500) / 1500.
HU_OFFSET = 1024.0
WINDOW_WIDTH = 1500.0
WINDOW_HU = (-HU_OFFSET, WINDOW_WIDTH - HU_OFFSET)


@dataclass(frozen=True)
class CTFlowSize:
    """The architecture's sizes; ``PAPER_SIZE`` is upstream's UCLA configuration."""

    rrdb_blocks: int
    features: int
    growth: int
    flow_steps: int
    stacked_blocks: tuple[int, ...]
    levels: int = 3
    transition_steps: int = 2
    hidden_channels: int = 64

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def size_multiple(self) -> int:
        """Slice sides must be multiples of this (one 2x2 squeeze per level)."""
        return int(2**self.levels)


PAPER_SIZE = CTFlowSize(
    rrdb_blocks=14, features=64, growth=32, flow_steps=16, stacked_blocks=(1, 5, 9, 13)
)
#: The CPU size: same structure with a 4-block, 32-feature trunk whose every block conditions
#: the flow, and K = 4 steps of 32 hidden channels. Measured (docs/ct-harmonize.md): one NLL
#: step of 8 x 64^2 took 4.2 s against the paper size's 60 s; halving trunk and K again saved
#: nothing (the encoder's convolutions dominate), one of nf 64 and K 8 took 12 s.
CPU_SIZE = CTFlowSize(
    rrdb_blocks=4,
    features=32,
    growth=16,
    flow_steps=4,
    stacked_blocks=(0, 1, 2, 3),
    hidden_channels=32,
)
SIZES = {'paper': PAPER_SIZE, 'cpu': CPU_SIZE}


def hu_to_network(hu: torch.Tensor) -> torch.Tensor:
    return torch.clamp((hu + HU_OFFSET) / WINDOW_WIDTH, 0.0, 1.0)


def network_to_hu(value: torch.Tensor) -> torch.Tensor:
    return torch.clamp(value, 0.0, 1.0) * WINDOW_WIDTH - HU_OFFSET


class Squeeze(nn.Module):
    """A parameter-free place holder in the layer list, as upstream's SqueezeLayer."""


class ConditionalFlow(nn.Module):
    """The multi-scale flow: ``encode`` reference -> latents, ``decode`` latents -> reference."""

    def __init__(self, size: CTFlowSize, condition_channels: int) -> None:
        super().__init__()
        self.levels = size.levels
        self.layers = nn.ModuleList()
        channels = 1
        for level in range(1, size.levels + 1):
            channels *= 4
            self.layers.append(Squeeze())
            for _ in range(size.transition_steps):
                self.layers.append(FlowStep(channels, None, size.hidden_channels))
            for _ in range(size.flow_steps):
                self.layers.append(FlowStep(channels, condition_channels, size.hidden_channels))
            if level < size.levels:
                split = Split(channels)
                self.layers.append(split)
                channels = split.kept

    def encode(
        self, reference: torch.Tensor, conditions: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Latents (finest first, the final z last) and the map's per-sample log|det J|."""
        h = reference
        logdet = reference.new_zeros(reference.shape[0])
        latents = []
        level = 0
        for layer in self.layers:
            if isinstance(layer, Squeeze):
                level += 1
                h = squeeze(h)
            elif isinstance(layer, Split):
                h, latent, logdet = layer.split(h, logdet)
                latents.append(latent)
            else:
                h, logdet = layer(h, logdet, conditions[level - 1])
        latents.append(h)
        return latents, logdet

    def decode(self, latents: list[torch.Tensor], conditions: list[torch.Tensor]) -> torch.Tensor:
        remaining = list(latents)
        h = remaining.pop()
        logdet = h.new_zeros(h.shape[0])
        level = self.levels
        for layer in reversed(self.layers):
            if isinstance(layer, Squeeze):
                level -= 1
                h = unsqueeze(h)
            elif isinstance(layer, Split):
                h = layer.merge(h, remaining.pop())
            else:
                h, logdet = layer(h, logdet, conditions[level - 1], reverse=True)
        return h


class CTFlow(nn.Module):
    """The RRDB encoder and the conditional flow (upstream's SRFlowNet at scale 1)."""

    def __init__(self, size: CTFlowSize) -> None:
        super().__init__()
        self.size = size
        self.RRDB = RRDBNet(size.rrdb_blocks, size.features, size.growth, size.stacked_blocks)
        self.flowUpsamplerNet = ConditionalFlow(size, self.RRDB.condition_channels)

    def conditions(self, source: torch.Tensor) -> list[torch.Tensor]:
        return self.RRDB.features(source, self.size.levels)

    def encode(
        self, source: torch.Tensor, reference: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.flowUpsamplerNet.encode(reference, self.conditions(source))

    def decode(self, source: torch.Tensor, latents: list[torch.Tensor]) -> torch.Tensor:
        return self.flowUpsamplerNet.decode(latents, self.conditions(source))

    def nll_bits_per_dim(self, source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood of ``reference`` given ``source``, bits/pixel."""
        latents, logdet = self.encode(source, reference)
        log_p = logdet + sum(standard_normal_log_density(latent) for latent in latents)
        return -log_p / (math.log(2.0) * reference.shape[-2] * reference.shape[-1])

    def latent_shapes(self, batch: int, height: int, width: int) -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = []
        channels = 1
        for level in range(1, self.size.levels + 1):
            channels *= 4
            side = (height >> level, width >> level)
            if level < self.size.levels:
                shapes.append((batch, channels - channels // 2, *side))
                channels //= 2
        shapes.append((batch, channels, height >> self.size.levels, width >> self.size.levels))
        return shapes

    def sample(
        self, source: torch.Tensor, tau: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A reference-like slice for ``source``: every latent drawn from N(0, tau^2)."""
        batch, _, height, width = source.shape
        latents = [
            # drawn on the generator's device (CPU by default), so seeds give the same
            # latents on every device
            tau * torch.randn(shape, generator=generator).to(source)
            for shape in self.latent_shapes(batch, height, width)
        ]
        return self.decode(source, latents)


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
