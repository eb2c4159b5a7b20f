"""QC figures: three orthogonal planes of an image, plain or with contours over it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # figures are written from worker processes without a display
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
from nibabel.orientations import aff2axcodes  # noqa: E402

from mrctprep.imaging.axes import three  # noqa: E402

#: (level, width) display windows in HU for CT figures.
CT_WINDOWS = {
    'brain': (40, 80),
    'soft-tissue': (40, 400),
    'lung': (-600, 1500),
    'bone': (400, 1800),
}


@dataclass(frozen=True)
class _Plane:
    """One of the three planes through a voxel of an RAS+ volume, sized in world mm."""

    name: str
    cut: tuple
    extent_mm: tuple[float, float, float, float]
    sides: tuple[str, str]


def _planes(img: nb.Nifti1Image, centre: tuple[int, int, int]) -> list[_Plane]:
    """Sagittal, coronal and axial planes through ``centre`` (``img`` in RAS+ order)."""
    x, y, z = (n * d for n, d in zip(img.shape[:3], img.header.get_zooms()[:3], strict=True))
    return [
        _Plane('sagittal', np.s_[centre[0], :, :], (0, y, 0, z), ('P', 'A')),
        _Plane('coronal', np.s_[:, centre[1], :], (0, x, 0, z), ('L', 'R')),
        _Plane('axial', np.s_[:, :, centre[2]], (0, x, 0, y), ('L', 'R')),
    ]


def _draw_plane(axis, data: np.ndarray, plane: _Plane, low: float, high: float, title: str):
    """The plane in grey, neurological display (left of the image = patient's left)."""
    axis.imshow(
        data[plane.cut].T,
        cmap='gray',
        vmin=low,
        vmax=high,
        origin='lower',
        extent=plane.extent_mm,
        interpolation='nearest',
    )
    axis.set_title(title, color='white', fontsize=9)
    axis.axis('off')


def _label_sides(axis, plane: _Plane) -> None:
    left, right = plane.sides
    axis.text(0.02, 0.5, left, color='yellow', transform=axis.transAxes, va='center')
    axis.text(0.98, 0.5, right, color='yellow', transform=axis.transAxes, va='center', ha='right')


def _save_figure(figure, title: str, out_file: str | Path) -> Path:
    figure.suptitle(title, color='white', fontsize=11)
    figure.tight_layout()
    out_file = Path(out_file)
    figure.savefig(out_file, facecolor='black', format=out_file.suffix.lstrip('.'))
    plt.close(figure)
    return out_file


def _require_ras(img: nb.Nifti1Image, function: str) -> None:
    if ''.join(aff2axcodes(img.affine)) != 'RAS':
        raise ValueError(f'{function} needs an RAS+ image, got {aff2axcodes(img.affine)}')


def _percentile_window(data: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile of the non-zero voxels."""
    foreground = data[data != 0]
    if not foreground.size:
        return 0.0, 1.0
    low, high = np.percentile(foreground, [1, 99])
    return float(low), float(high)


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
    _require_ras(img, 'plot_orthogonal_slices')
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if window is None:
        low, high = _percentile_window(data)
    else:
        level, width = window
        low, high = level - width / 2, level + width / 2
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor='black')
    for axis, plane in zip(axes, _planes(img, _foreground_centre(data > low)), strict=True):
        _draw_plane(axis, data, plane, low, high, plane.name)
        _label_sides(axis, plane)
    return _save_figure(figure, title, out_file)


def plot_before_after(
    before: nb.Nifti1Image,
    after: nb.Nifti1Image,
    out_file: str | Path,
    *,
    title: str,
    labels: tuple[str, str] = ('before', 'after'),
) -> Path:
    """Two rows (``before`` above ``after``) of the same three planes, in one window.

    Both images share one RAS+ grid; the window is the 1st-99th percentile of ``after``'s
    non-zero voxels, so that a change of sharpness, not of contrast, is what shows.
    """
    _require_ras(after, 'plot_before_after')
    images = [np.asanyarray(img.dataobj, dtype=np.float32) for img in (before, after)]
    low, high = _percentile_window(images[1])
    planes = _planes(after, _foreground_centre(images[1] > low))
    figure, axes = plt.subplots(2, 3, figsize=(12, 8.4), facecolor='black')
    for row, data, label in zip(axes, images, labels, strict=True):
        for axis, plane in zip(row, planes, strict=True):
            _draw_plane(axis, data, plane, low, high, f'{label}: {plane.name}')
            _label_sides(axis, plane)
    return _save_figure(figure, title, out_file)


def plot_ct_windows(
    img: nb.Nifti1Image,
    out_file: str | Path,
    *,
    title: str,
    windows: Mapping[str, tuple[float, float]] = CT_WINDOWS,
) -> Path:
    """One row per display window (default: brain, soft tissue, lung, bone), three planes each.

    ``img`` must be a CT in HU in RAS+ voxel order; the planes cross the body's centre
    (voxels above -500 HU), in world mm.
    """
    _require_ras(img, 'plot_ct_windows')
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    planes = _planes(img, _foreground_centre(data > -500))
    figure, axes = plt.subplots(
        len(windows), 3, figsize=(10, 3.2 * len(windows)), facecolor='black', squeeze=False
    )
    for row, (window_name, (level, width)) in zip(axes, windows.items(), strict=True):
        for axis, plane in zip(row, planes, strict=True):
            _draw_plane(
                axis,
                data,
                plane,
                level - width / 2,
                level + width / 2,
                f'{plane.name}, {window_name} {level:g}/{width:g}',
            )
    return _save_figure(figure, title, out_file)


def _foreground_centre(foreground: np.ndarray) -> tuple[int, int, int]:
    if not foreground.any():
        return three(n // 2 for n in foreground.shape)
    return three(int(np.median(np.nonzero(foreground)[axis])) for axis in range(3))


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
    low, high = _percentile_window(data)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor='black')
    for axis, plane in zip(axes, _planes(img, _foreground_centre(outline > level)), strict=True):
        _draw_plane(axis, data, plane, low, high, plane.name)
        outline_plane = outline[plane.cut].T
        if outline_plane.min() < level < outline_plane.max():
            axis.contour(
                outline_plane,
                levels=[level],
                colors=colour,
                linewidths=0.8,
                origin='lower',
                extent=plane.extent_mm,
            )
        _label_sides(axis, plane)
    return _save_figure(figure, title, out_file)


def template_edges(template: nb.Nifti1Image) -> nb.Nifti1Image:
    """Normalised gradient magnitude of a template: its tissue boundaries, for overlays."""
    from scipy import ndimage

    data = ndimage.gaussian_filter(np.asanyarray(template.dataobj, dtype=np.float32), 1.0)
    magnitude = ndimage.generic_gradient_magnitude(data, ndimage.sobel)
    magnitude /= max(float(np.percentile(magnitude[magnitude > 0], 95)), 1e-6)
    return nb.Nifti1Image(magnitude.astype(np.float32), template.affine)


def plot_contact_sheet(
    images: list[np.ndarray],
    labels: list[str],
    out_file: str | Path,
    *,
    title: str,
    columns: int | None = None,
) -> Path:
    """Images (rows, columns; row 0 at the top) side by side in a near-square grid (or in
    ``columns`` columns), labelled.

    Each image is shown between its own 1st and 99th percentiles, so that views with very
    different ranges stay readable; the figure format follows ``out_file``'s suffix.
    """
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(2.6 * columns, 2.8 * rows + 0.4),
        facecolor='black',
        squeeze=False,
    )
    for axis in axes.flat:
        axis.axis('off')
    for axis, image, label in zip(axes.flat, images, labels, strict=False):
        low, high = np.percentile(image, [1, 99])
        axis.imshow(
            image, cmap='gray', vmin=low, vmax=max(high, low + 1e-6), interpolation='nearest'
        )
        axis.set_title(label, color='white', fontsize=9)
    figure.suptitle(title, color='white', fontsize=11)
    figure.tight_layout()
    out_file = Path(out_file)
    figure.savefig(out_file, facecolor='black', format=out_file.suffix.lstrip('.'), dpi=100)
    plt.close(figure)
    return out_file
