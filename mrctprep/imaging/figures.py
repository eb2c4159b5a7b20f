"""QC figures: three orthogonal planes of an image in RAS+ orientation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # figures are written from worker processes without a display
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
from nibabel.orientations import aff2axcodes  # noqa: E402

#: (level, width) display windows in HU for CT figures.
CT_WINDOWS = {
    'brain': (40, 80),
    'soft-tissue': (40, 400),
    'lung': (-600, 1500),
    'bone': (400, 1800),
}


def plot_orthogonal_slices(
    img: nb.Nifti1Image,
    out_file: str | Path,
    *,
    title: str,
    window: tuple[float, float] | None = None,
) -> Path:
    """Sagittal, coronal and axial planes through the foreground's centre, in world mm.

    ``img`` must be in RAS+ voxel order. ``window`` is (level, width); by default the
    1st-99th percentile of non-zero voxels is shown.
    """
    if ''.join(aff2axcodes(img.affine)) != 'RAS':
        raise ValueError(
            f'plot_orthogonal_slices needs an RAS+ image, got {aff2axcodes(img.affine)}'
        )
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if window is None:
        foreground = data[data != 0]
        low, high = np.percentile(foreground, [1, 99]) if foreground.size else (0.0, 1.0)
    else:
        level, width = window
        low, high = level - width / 2, level + width / 2
    centre = _foreground_centre(data > low)
    zooms = img.header.get_zooms()[:3]
    extent_mm = [n * z for n, z in zip(data.shape, zooms, strict=True)]

    planes = [
        ('sagittal', data[centre[0], :, :].T, (extent_mm[1], extent_mm[2]), ('P', 'A')),
        ('coronal', data[:, centre[1], :].T, (extent_mm[0], extent_mm[2]), ('L', 'R')),
        ('axial', data[:, :, centre[2]].T, (extent_mm[0], extent_mm[1]), ('L', 'R')),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor='black')
    for axis, plane_spec in zip(axes, planes, strict=True):
        name, plane, (width_mm, height_mm), (left, right) = plane_spec
        axis.imshow(
            plane, cmap='gray', vmin=low, vmax=high, origin='lower',
            extent=(0, width_mm, 0, height_mm), interpolation='nearest',
        )  # fmt: skip
        axis.set_title(name, color='white', fontsize=10)
        axis.text(0.02, 0.5, left, color='yellow', transform=axis.transAxes, va='center')
        axis.text(0.98, 0.5, right, color='yellow', transform=axis.transAxes, va='center',
                  ha='right')  # fmt: skip
        axis.axis('off')
    figure.suptitle(title, color='white', fontsize=11)
    figure.tight_layout()
    out_file = Path(out_file)
    figure.savefig(out_file, facecolor='black', format=out_file.suffix.lstrip('.'))
    plt.close(figure)
    return out_file


def _foreground_centre(foreground: np.ndarray) -> tuple[int, int, int]:
    if not foreground.any():
        return tuple(n // 2 for n in foreground.shape)
    return tuple(int(np.median(np.nonzero(foreground)[axis])) for axis in range(3))
