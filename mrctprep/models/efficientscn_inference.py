"""EfficientSCN's two inference stages on a CT: the organ box, then the organ labels.

The geometry is :mod:`mrctprep.imaging.organ_boxes`; here the networks run, in the fast
precision of the device (float16 on CUDA, bfloat16 autocast on CPUs that have it), with
float32 outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nb
import numpy as np
import numpy.typing as npt
import torch

from mrctprep.core.devices import fast_precision
from mrctprep.imaging.organ_boxes import (
    LocalizationInput,
    SegmentationInput,
    box_from_mask,
    box_world_ras,
    from_lps_array,
    labels_on_crop,
    localization_input,
    paste_labels,
    segmentation_input,
    to_lps_volume,
)
from mrctprep.models.efficientscn import LocalizationNet, SpatialConfigurationNet


def load_localization_net(state_dict: dict[str, torch.Tensor], device: str) -> LocalizationNet:
    network = LocalizationNet()
    network.load_state_dict(state_dict)
    return network.to(device).eval()


def localization_mask(
    network: LocalizationNet, loc: LocalizationInput, device: str
) -> npt.NDArray[np.bool_]:
    """Foreground where the foreground logit exceeds the background logit."""
    image = torch.from_numpy(loc.array)[None, None].to(device)
    with torch.no_grad(), fast_precision(device):
        logits = network(image).float()
    mask: npt.NDArray[np.bool_] = (logits[0, 1] > logits[0, 0]).cpu().numpy()
    return mask


def scn_probabilities(
    network: SpatialConfigurationNet, scn_input: SegmentationInput, device: str
) -> npt.NDArray[np.float32]:
    """The SCN's fused probabilities ``(5, z, y, x)`` on its input grid."""
    image = torch.from_numpy(scn_input.array)[None, None].to(device)
    with torch.no_grad(), fast_precision(device):
        probabilities = network(image).float()
    result: npt.NDArray[np.float32] = probabilities[0].cpu().numpy()
    return result


@dataclass(frozen=True)
class OrganSegmentation:
    """FLARE labels on the CT's own voxel grid, and the localization box in world mm (RAS+)."""

    labels: npt.NDArray[np.uint8]
    box_min_ras: tuple[float, float, float]
    box_max_ras: tuple[float, float, float]
    scn_spacing_mm: float
    scn_size: tuple[int, int, int]


def segment_organs(
    image: nb.Nifti1Image,
    localization: LocalizationNet,
    scn: SpatialConfigurationNet,
    device: str,
    scn_spacing: float | None = None,
) -> OrganSegmentation:
    """Both stages on one CT (in HU): box the organs at 6 mm, segment the box at 2 mm (or at
    ``scn_spacing``, the spacing a CPU-sized SCN was trained at), and bring the labels back
    onto the CT's grid."""
    volume = to_lps_volume(image)
    loc = localization_input(volume)
    box = box_from_mask(localization_mask(localization, loc, device), loc)
    scn_input = segmentation_input(volume, box, spacing=scn_spacing)
    probabilities = scn_probabilities(scn, scn_input, device)
    labels = labels_on_crop(probabilities, scn_input.crop)
    shape: tuple[int, int, int] = volume.array.shape  # type: ignore[assignment]
    full = paste_labels(labels, scn_input.crop, shape)
    low, high = box_world_ras(box, volume)
    return OrganSegmentation(
        labels=from_lps_array(full, image),
        box_min_ras=low,
        box_max_ras=high,
        scn_spacing_mm=scn_input.spacing,
        scn_size=scn_input.array.shape,  # type: ignore[arg-type]
    )


def scn_from_state_dict(state_dict: dict[str, torch.Tensor]) -> SpatialConfigurationNet:
    """An SCN of the size the weights were trained at (the authors' 32/16 filters, or a
    smaller one trained on a CPU), with those weights loaded."""
    levels = len(
        {
            key.split('.')[2]
            for key in state_dict
            if key.startswith('local_appearance.contracting.')
        }
    )
    spatial_levels = len(
        {
            key.split('.')[4]
            for key in state_dict
            if key.startswith('spatial_unets.0.0.contracting.')
        }
    )
    network = SpatialConfigurationNet(
        filters=int(state_dict['local_prediction.weight'].shape[1]),
        spatial_filters=int(state_dict['spatial_unets.0.1.weight'].shape[1]),
        levels=levels,
        spatial_levels=spatial_levels,
    )
    network.load_state_dict(state_dict)
    return network


def load_organ_networks(
    localization_file: str, scn_file: str, device: str
) -> tuple[LocalizationNet, SpatialConfigurationNet]:
    """Both stages from their weights files (already verified against their cards)."""
    state = torch.load(localization_file, map_location='cpu', weights_only=True)
    scn = scn_from_state_dict(torch.load(scn_file, map_location='cpu', weights_only=True))
    return load_localization_net(state, device), scn.to(device).eval()
