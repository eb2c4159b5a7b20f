"""The output grid of a super-resolution: around the scans, or one shared by all subjects."""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nb
import numpy as np
from nibabel.orientations import inv_ornt_aff, io_orientation

from mrctprep.imaging.axes import three

#: Sizes of UniRes's common grid are 2 * 2^n or 3 * 2^n (friendly to CNNs), at most this.
MAX_COMMON_SIZE = 256


@dataclass(frozen=True)
class OutputGrid:
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return three(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def to_metadata(self) -> dict:
        return {'GridShape': list(self.shape), 'GridAffine': np.round(self.affine, 6).tolist()}


def scan_grid(scans: list[tuple[tuple[int, ...], np.ndarray]], voxel_size: float) -> OutputGrid:
    """Isotropic ``voxel_size`` voxels over every scan's voxel centres (shape, affine pairs).

    The axes are those of the first scan (the registration target) reordered to RAS+, with
    shears removed, rather than UniRes's average of all orientations: the first scan, and
    every scan acquired in its orientation, then keep the separable forward model. Its voxel
    centres stay on the grid's lattice wherever its voxel size is a multiple of ``voxel_size``.
    """
    shape, affine = scans[0]
    ras = affine @ inv_ornt_aff(io_orientation(affine), shape[:3])
    u, _, vt = np.linalg.svd(ras[:3, :3])
    grid = np.eye(4)
    grid[:3, :3] = u @ vt * voxel_size
    grid[:3, 3] = ras[:3, 3]
    to_grid = np.linalg.inv(grid)
    scan_corners = []
    for scan_shape, scan_affine in scans:
        box = np.array(np.meshgrid(*[[0, n - 1] for n in scan_shape[:3]], indexing='ij'))
        points = np.vstack([box.reshape(3, -1), np.ones((1, 8))])
        scan_corners.append((to_grid @ scan_affine @ points)[:3])
    corners = np.hstack(scan_corners)
    low = np.floor(corners.min(axis=1) + 1e-3)
    high = np.ceil(corners.max(axis=1) - 1e-3)
    grid[:3, 3] = (grid @ np.append(low, 1))[:3]
    return OutputGrid(three(int(n) for n in high - low + 1), grid)


def common_size(n: int) -> int:
    """The smallest 2 * 2^k or 3 * 2^k at least ``n``, at most :data:`MAX_COMMON_SIZE`.

    >>> [common_size(n) for n in (150, 181, 197, 300)]
    [192, 192, 256, 256]
    """
    candidates = [m * 2**k for m in (2, 3) for k in range(12)]
    return min(min(c for c in candidates if c >= n), MAX_COMMON_SIZE)


def common_grid(
    template: nb.Nifti1Image, template_to_subject: np.ndarray, voxel_size: float
) -> OutputGrid:
    """A grid shared across subjects: the template's field of view at ``voxel_size``, sizes
    from :func:`common_size` (centred), carried into the subject by the rigid transform
    ``template_to_subject`` (RAS mm) from the subject's alignment to the template."""
    ras = nb.as_closest_canonical(template)
    extent = (np.array(ras.shape[:3]) - 1) * np.array(ras.header.get_zooms()[:3])
    centre = ras.affine @ np.append((np.array(ras.shape[:3]) - 1) / 2, 1)
    shape = [common_size(math.ceil(e / voxel_size) + 1) for e in extent]
    grid = np.diag([voxel_size] * 3 + [1.0])
    grid[:3, 3] = centre[:3] - voxel_size * (np.array(shape) - 1) / 2
    return OutputGrid(three(shape), template_to_subject @ grid)
