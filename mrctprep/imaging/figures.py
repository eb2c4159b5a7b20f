"""QC figures: three orthogonal planes of an image, plain or with contours over it."""

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


def plot_ct_windows(
    img: nb.Nifti1Image,
    out_file: str | Path,
    *,
    title: str,
    windows: dict[str, tuple[float, float]] = CT_WINDOWS,
) -> Path:
    """One row per display window (default: brain, soft tissue, lung, bone), three planes each.

    ``img`` must be a CT in HU in RAS+ voxel order; the planes cross the body's centre
    (voxels above -500 HU), in world mm.
    """
    if ''.join(aff2axcodes(img.affine)) != 'RAS':
        raise ValueError(f'plot_ct_windows needs an RAS+ image, got {aff2axcodes(img.affine)}')
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    centre = _foreground_centre(data > -500)
    zooms = img.header.get_zooms()[:3]
    extent_mm = [n * z for n, z in zip(data.shape, zooms, strict=True)]
    planes = [
        ('sagittal', data[centre[0], :, :].T, (extent_mm[1], extent_mm[2])),
        ('coronal', data[:, centre[1], :].T, (extent_mm[0], extent_mm[2])),
        ('axial', data[:, :, centre[2]].T, (extent_mm[0], extent_mm[1])),
    ]
    figure, axes = plt.subplots(
        len(windows), 3, figsize=(10, 3.2 * len(windows)), facecolor='black', squeeze=False
    )
    for row, (window_name, (level, width)) in zip(axes, windows.items(), strict=True):
        for axis, (plane_name, plane, (width_mm, height_mm)) in zip(row, planes, strict=True):
            axis.imshow(
                plane, cmap='gray', vmin=level - width / 2, vmax=level + width / 2,
                origin='lower', extent=(0, width_mm, 0, height_mm), interpolation='nearest',
            )  # fmt: skip
            axis.set_title(f'{plane_name}, {window_name} {level:g}/{width:g}', color='white',
                           fontsize=9)  # fmt: skip
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


def plot_contour_overlay(
    img: nb.Nifti1Image,
    contour: nb.Nifti1Image,
    out_file: str | Path,
    *,
    title: str,
    level: float = 0.5,
    colour: str = 'red',
) -> Path:
    """Three planes of ``img`` with the ``level`` contour of ``contour`` drawn over them.

    Both images share one grid (any orientation: planes are taken in RAS+ order). Used for
    the brain mask over the T1w, and for template edges over the registered brain.
    """
    img, contour = nb.as_closest_canonical(img), nb.as_closest_canonical(contour)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    outline = np.asanyarray(contour.dataobj, dtype=np.float32)
    foreground = data[data != 0]
    low, high = np.percentile(foreground, [1, 99]) if foreground.size else (0.0, 1.0)
    centre = _foreground_centre(outline > level)
    zooms = img.header.get_zooms()[:3]
    extent_mm = [n * z for n, z in zip(data.shape, zooms, strict=True)]
    cuts = [
        ('sagittal', np.s_[centre[0], :, :], (extent_mm[1], extent_mm[2]), ('P', 'A')),
        ('coronal', np.s_[:, centre[1], :], (extent_mm[0], extent_mm[2]), ('L', 'R')),
        ('axial', np.s_[:, :, centre[2]], (extent_mm[0], extent_mm[1]), ('L', 'R')),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor='black')
    for axis, (name, cut, (width_mm, height_mm), (left, right)) in zip(axes, cuts, strict=True):
        extent = (0, width_mm, 0, height_mm)
        axis.imshow(data[cut].T, cmap='gray', vmin=low, vmax=high, origin='lower',
                    extent=extent, interpolation='nearest')  # fmt: skip
        plane = outline[cut].T
        if plane.min() < level < plane.max():
            axis.contour(plane, levels=[level], colors=colour, linewidths=0.8, origin='lower',
                         extent=extent)  # fmt: skip
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


def template_edges(template: nb.Nifti1Image) -> nb.Nifti1Image:
    """Normalised gradient magnitude of a template: its tissue boundaries, for overlays."""
    from scipy import ndimage

    data = ndimage.gaussian_filter(np.asanyarray(template.dataobj, dtype=np.float32), 1.0)
    magnitude = ndimage.generic_gradient_magnitude(data, ndimage.sobel)
    magnitude /= max(float(np.percentile(magnitude[magnitude > 0], 95)), 1e-6)
    return nb.Nifti1Image(magnitude.astype(np.float32), template.affine)
