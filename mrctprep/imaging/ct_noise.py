"""Mean HU and noise in fixed tissue regions of a CT: how close one reconstruction is to another.

Kernel and dose change a CT's noise and texture while its mean HU stays; a harmonized image
should move its noise towards the reference reconstruction's and leave its means alone. The
regions are HU ranges of one image (for a study: the reference reconstruction, so that every
reconstruction of an acquisition is measured on the same voxels), read after a 5 x 5
in-plane median so that noise does not move voxels between regions, inside the body (above
-500 HU with holes filled per slice, so the lungs belong to it):

- ``lung``: -950 to -650 HU, parenchyma without airways and vessels;
- ``fat``: -190 to -30 HU, the usual adipose range;
- ``soft_tissue``: 0 to 100 HU, muscle and organs (the Global Noise Index's range).

Noise is the Global Noise Index of Christianson et al. (Radiology 2015): the standard
deviation of HU in every window of about 6 mm in-plane, over the windows that lie wholly
inside the region; the median of those SDs (where the paper takes its histogram's mode,
which depends on the bin width) is the region's noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from mrctprep.imaging.hounsfield import BODY_HU

FloatVolume = npt.NDArray[np.floating]
Mask = npt.NDArray[np.bool_]

TISSUE_RANGES_HU: dict[str, tuple[float, float]] = {
    'lung': (-950.0, -650.0),
    'fat': (-190.0, -30.0),
    'soft_tissue': (0.0, 100.0),
}
NOISE_WINDOW_MM = 6.0


@dataclass(frozen=True)
class RegionStatistics:
    """A region's mean HU and Global Noise Index over ``voxels`` voxels (NaN where empty)."""

    voxels: int
    mean_hu: float
    noise_sd_hu: float


def noise_window_pixels(pixel_mm: float) -> int:
    """The odd side, in pixels, of the noise window nearest to 6 mm (at least 3).

    >>> noise_window_pixels(0.7), noise_window_pixels(1.5), noise_window_pixels(3.0)
    (9, 5, 3)
    """
    return max(3, round(NOISE_WINDOW_MM / pixel_mm)) | 1


def tissue_regions(hu: FloatVolume, pixel_mm: float) -> dict[str, Mask]:
    """The voxels whose noise window lies wholly inside each tissue range (axial slices are
    the last axis)."""
    smoothed = ndi.median_filter(hu, size=(5, 5, 1))
    body = np.stack(
        [ndi.binary_fill_holes(smoothed[:, :, z] > BODY_HU) for z in range(hu.shape[2])],
        axis=2,
    )
    inside = np.ones((noise_window_pixels(pixel_mm),) * 2 + (1,), dtype=bool)
    return {
        name: ndi.binary_erosion(body & (smoothed >= low) & (smoothed <= high), inside)
        for name, (low, high) in TISSUE_RANGES_HU.items()
    }


def region_statistics(
    hu: FloatVolume, regions: dict[str, Mask], pixel_mm: float
) -> dict[str, RegionStatistics]:
    """Each region's mean HU and noise (the median of the windows' SDs) in ``hu``."""
    local_sd = _local_sd(hu, noise_window_pixels(pixel_mm))
    statistics = {}
    for name, mask in regions.items():
        voxels = int(mask.sum())
        statistics[name] = RegionStatistics(
            voxels,
            float(hu[mask].mean()) if voxels else float('nan'),
            float(np.median(local_sd[mask])) if voxels else float('nan'),
        )
    return statistics


def _local_sd(hu: FloatVolume, side: int) -> npt.NDArray[np.float32]:
    """The sample SD (ddof 1) of each in-plane ``side`` x ``side`` window, slice by slice."""
    count = side * side
    out = np.empty(hu.shape, dtype=np.float32)
    for z in range(hu.shape[2]):
        plane = hu[:, :, z].astype(np.float64)
        mean = ndi.uniform_filter(plane, side)
        mean_square = ndi.uniform_filter(plane * plane, side)
        variance = (mean_square - mean * mean) * count / (count - 1)
        out[:, :, z] = np.sqrt(np.clip(variance, 0.0, None))
    return out
