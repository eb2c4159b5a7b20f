"""CTFlow applied to a CT volume: slice by slice, at a temperature, with sample statistics.

Axial slices (the last array axis) are padded with air to multiples of 8, mapped in batches,
and cropped back. With ``samples`` > 1 every slice is sampled that many times and the
voxel-wise mean and standard deviation are returned: the mean as the harmonized image, the
standard deviation as the uncertainty map. Voxels whose input lies outside the network's
window ([-1024, 476] HU: bone, metal, contrast above it) keep their input HU, so that the
window does not erase them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from mrctprep.models.ctflow import (
    WINDOW_HU,
    CTFlow,
    CTFlowSize,
    hu_to_network,
    network_to_hu,
)

DEFAULT_TAU = 0.8
DEFAULT_BATCH = 8
FloatVolume = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Harmonized:
    """The harmonized volume in HU and, with several samples, their voxel-wise SD (HU)."""

    hu: FloatVolume
    std: FloatVolume | None


def load_ctflow(weights_file: str, size: dict[str, Any], device: str) -> CTFlow:
    """A CTFlow of ``size`` (its card's ``trained.SizeParameters``) with these (already
    verified) weights, on ``device``."""
    model = CTFlow(CTFlowSize(**{**size, 'stacked_blocks': tuple(size['stacked_blocks'])}))
    model.load_state_dict(torch.load(weights_file, map_location='cpu', weights_only=True))
    return model.to(device).eval()


@torch.no_grad()
def harmonize_slices(
    model: CTFlow,
    hu_slices: torch.Tensor,
    tau: float,
    samples: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and SD over ``samples`` draws for a batch of B x 1 x H x W slices in HU."""
    height, width = hu_slices.shape[-2:]
    multiple = model.size.size_multiple
    pad = (0, -width % multiple, 0, -height % multiple)
    # network value 0 is air; pad with it so the border looks like the outside of a body
    source = functional.pad(hu_to_network(hu_slices), pad, value=0.0)
    conditions = model.conditions(source)
    total = torch.zeros_like(source)
    squares = torch.zeros_like(source)
    for _ in range(samples):
        latents = [
            tau * torch.randn(shape, generator=generator).to(source)
            for shape in model.latent_shapes(*source.shape[:1], *source.shape[-2:])
        ]
        sample = network_to_hu(model.flowUpsamplerNet.decode(latents, conditions))
        total += sample
        squares += sample * sample
    mean = total / samples
    variance = torch.clamp(squares / samples - mean * mean, min=0.0)
    return mean[..., :height, :width], variance.sqrt()[..., :height, :width]


def harmonize_volume(
    model: CTFlow,
    hu: FloatVolume,
    *,
    tau: float = DEFAULT_TAU,
    samples: int = 1,
    seed: int = 0,
    batch: int = DEFAULT_BATCH,
    device: str = 'cpu',
) -> Harmonized:
    """``hu`` (X x Y x Z, axial slices along Z) harmonized slice by slice."""
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(hu, -1, 0), dtype=np.float32))
    means, stds = [], []
    for start in range(0, slices.shape[0], batch):
        chunk = slices[start : start + batch, None].to(device)
        mean, std = harmonize_slices(model, chunk, tau, samples, generator)
        means.append(mean[:, 0].cpu())
        stds.append(std[:, 0].cpu())
    mean_hu = np.moveaxis(torch.cat(means).numpy(), 0, -1)
    outside = (hu < WINDOW_HU[0]) | (hu > WINDOW_HU[1])
    mean_hu = np.where(outside, hu, mean_hu).astype(np.float32)
    if samples == 1:
        return Harmonized(mean_hu, None)
    std_hu = np.moveaxis(torch.cat(stds).numpy(), 0, -1)
    return Harmonized(mean_hu, np.where(outside, 0.0, std_hu).astype(np.float32))
