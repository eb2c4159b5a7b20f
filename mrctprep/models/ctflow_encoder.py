"""CTFlow's conditioning encoder: ESRGAN's RRDBNet at scale 1 (Wang et al., 2018), as SRFlow
and CTFlow use it.

A 3x3 convolution, a trunk of residual-in-residual dense blocks (RRDB), a 3x3 trunk
convolution added back (``last``), and, for the L1 pre-training and the regression baseline,
a head of two 3x3 convolutions to one channel. The flow is conditioned on ``last`` together
with the outputs of a few trunk blocks, resized to each flow level's resolution.

Module names follow upstream (``conv_first``, ``RRDB_trunk.N.RDB1.conv1``, ``trunk_conv``,
``HRconv``, ``conv_last``) so that state dicts line up key for key. Upstream's RRDBNet also
carries two upsampling convolutions (``upconv1``, ``upconv2``) that scale 1 never calls; they
are left out here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

LEAKY_SLOPE = 0.2
#: ESRGAN's residual scaling: each dense block and each RRDB adds 0.2 of its output.
RESIDUAL_SCALE = 0.2
#: Kaiming initialisation scaled down (ESRGAN), which keeps the deep trunk stable at start.
INIT_SCALE = 0.1
DENSE_CONVS = 5


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each fed every earlier output (growth ``growth`` channels)."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for index in range(1, DENSE_CONVS + 1):
            out_channels = features if index == DENSE_CONVS else growth
            conv = nn.Conv2d(features + (index - 1) * growth, out_channels, 3, 1, 1)
            nn.init.kaiming_normal_(conv.weight, a=0, mode='fan_in')
            with torch.no_grad():
                conv.weight.mul_(INIT_SCALE)
            nn.init.zeros_(conv.get_parameter('bias'))
            self.add_module(f'conv{index}', conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = [x]
        for index in range(1, DENSE_CONVS):
            conv = self.get_submodule(f'conv{index}')
            inputs.append(functional.leaky_relu(conv(torch.cat(inputs, 1)), LEAKY_SLOPE))
        out: torch.Tensor = self.get_submodule('conv5')(torch.cat(inputs, 1))
        return out * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Three residual dense blocks in a residual connection of their own."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock(features, growth)
        self.RDB2 = ResidualDenseBlock(features, growth)
        self.RDB3 = ResidualDenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.RDB3(self.RDB2(self.RDB1(x)))
        return out * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """The encoder: ``features(x)`` conditions the flow, ``forward(x)`` is the L1 regression."""

    def __init__(
        self, blocks: int, features: int, growth: int, stacked_blocks: tuple[int, ...]
    ) -> None:
        super().__init__()
        if not all(0 <= block < blocks for block in stacked_blocks):
            raise ValueError(f'stacked blocks {stacked_blocks} outside a trunk of {blocks}')
        self.stacked_blocks = stacked_blocks
        self.conv_first = nn.Conv2d(1, features, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.trunk_conv = nn.Conv2d(features, features, 3, 1, 1)
        self.HRconv = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, 1, 3, 1, 1)

    @property
    def condition_channels(self) -> int:
        """Channels of each conditioning map: ``last`` plus the stacked block outputs."""
        return (len(self.stacked_blocks) + 1) * self.conv_first.out_channels

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fea = self.conv_first(x)
        stacked = []
        for index, block in enumerate(self.RRDB_trunk):
            fea = block(fea)
            if index in self.stacked_blocks:
                stacked.append(fea)
        last = fea + self.trunk_conv(fea)
        return last, torch.cat(stacked, 1)

    def features(self, x: torch.Tensor, levels: int) -> list[torch.Tensor]:
        """Conditioning maps for flow levels 1..``levels``, at 1/2, 1/4, ... of ``x``'s size.

        ``last`` is downsampled bilinearly (align_corners False, as upstream's ``fea_up0``,
        ``fea_up-1``, ``fea_up-2``), the stacked block outputs by nearest neighbour.
        """
        last, stacked = self._trunk(x)
        maps = []
        for level in range(1, levels + 1):
            size = (x.shape[-2] >> level, x.shape[-1] >> level)
            last_at_level = functional.interpolate(
                last, size=size, mode='bilinear', align_corners=False
            )
            stacked_at_level = functional.interpolate(stacked, size=size, mode='nearest')
            maps.append(torch.cat([last_at_level, stacked_at_level], 1))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last, _ = self._trunk(x)
        out: torch.Tensor = self.conv_last(functional.leaky_relu(self.HRconv(last), LEAKY_SLOPE))
        return out
