"""QC figures: planes of an image, plain or with contours over it, mosaics of several cuts per
axis, and a flicker of the registered brain against its template."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # figures are written from worker processes without a display
# Text as text, not glyph outlines: a report page weighs less.
matplotlib.rcParams['svg.fonttype'] = 'none'
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
from nibabel.orientations import aff2axcodes  # noqa: E402

from mrctprep.imaging.axes import three  # noqa: E402

#: Resolution of the pictures inside the figures: planes and contours are drawn as one picture
#: per panel (vector contours of a mask would weigh more than the image under them).
QC_DPI = 80

#: (level, width) display windows in HU for CT figures.
CT_WINDOWS = {
    'brain': (40, 80),
    'soft-tissue': (40, 400),
    'lung': (-600, 1500),
    'bone': (400, 1800),
}

#: The windows that fit each body region: no lung window on a head, no brain window on a chest.
REGION_WINDOWS = {
    'head': ('brain', 'bone'),
    'chest': ('soft-tissue', 'lung', 'bone'),
    'body': ('soft-tissue', 'bone'),
}
#: DICOM BodyPartExamined values (upper case) per region; others count as 'body'.
_BODY_PARTS = {
    'head': {'HEAD', 'BRAIN', 'SKULL', 'HEADNECK', 'HEAD_NECK'},
    'chest': {'CHEST', 'THORAX', 'LUNG', 'HEART', 'CHEST_ABDOMEN', 'CHESTABDOMEN', 'WHOLEBODY'},
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
        rasterized=True,
    )
    axis.set_title(title, color='white', fontsize=9)
    axis.axis('off')


def _label_sides(axis, plane: _Plane) -> None:
    left, right = plane.sides
    axis.text(0.02, 0.5, left, color='yellow', transform=axis.transAxes, va='center')
    axis.text(0.98, 0.5, right, color='yellow', transform=axis.transAxes, va='center', ha='right')


def save_figure(figure, title: str, out_file: str | Path) -> Path:
    """Title ``figure``, write it to ``out_file`` in the format its extension names, close it."""
    figure.suptitle(title, color='white', fontsize=11)
    figure.tight_layout()
    out_file = Path(out_file)
    figure.savefig(out_file, facecolor='black', format=out_file.suffix.lstrip('.'), dpi=QC_DPI)
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
    return save_figure(figure, title, out_file)


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
    return save_figure(figure, title, out_file)


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
    return save_figure(figure, title, out_file)


def _foreground_centre(foreground: np.ndarray) -> tuple[int, int, int]:
    if not foreground.any():
        return three(n // 2 for n in foreground.shape)
    return three(int(np.median(np.nonzero(foreground)[axis])) for axis in range(3))


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


def body_region(data: np.ndarray, zooms: tuple[float, ...], body_part: str | None = None) -> str:
    """``head``, ``chest`` or ``body`` for a CT in HU (RAS+): its DICOM BodyPartExamined when
    given, or else from the image. Lung-density voxels (-950 to -600 HU) over a quarter of the
    body's (above -500 HU) make a chest (an abdomen has about an eighth, from gas and partial
    volume at the skin; a head a twentieth); else a body under 22 cm across in every axial
    plane is a head."""
    if body_part:
        upper = body_part.strip().upper().replace(' ', '')
        return next((r for r, parts in _BODY_PARTS.items() if upper in parts), 'body')
    body = data > -500
    lung = (data > -950) & (data < -600)
    if lung.sum() > 0.25 * max(int(body.sum()), 1):
        return 'chest'
    widths = [
        max(np.ptp(np.nonzero(plane)[axis]) + 1 if plane.any() else 0 for plane in _axial(body))
        * zooms[axis]
        for axis in (0, 1)
    ]
    return 'head' if max(widths) < 220 else 'body'


def _axial(volume: np.ndarray) -> list[np.ndarray]:
    return [volume[:, :, z] for z in range(volume.shape[2])]


def _cut_indices(inside: np.ndarray, axis: int, count: int) -> list[int]:
    """``count`` planes evenly spaced over the middle 80% of where ``inside`` is along
    ``axis`` (over the whole axis when ``inside`` is empty)."""
    other = tuple(a for a in range(3) if a != axis)
    present = np.nonzero(inside.any(axis=other))[0]
    first, last = (present[0], present[-1]) if present.size else (0, inside.shape[axis] - 1)
    margin = 0.1 * (last - first)
    return [int(round(i)) for i in np.linspace(first + margin, last - margin, count)]


def _bounding_box(inside: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices around where ``inside`` is, ``margin`` voxels wider (the whole array if empty)."""
    if not inside.any():
        return tuple(slice(None) for _ in inside.shape)
    where = np.nonzero(inside)
    return tuple(
        slice(max(int(index.min()) - margin, 0), min(int(index.max()) + margin + 1, size))
        for index, size in zip(where, inside.shape, strict=True)
    )


def _plane_at(img: nb.Nifti1Image, axis: int, index: int) -> _Plane:
    """The plane at ``index`` along ``axis`` (0 sagittal, 1 coronal, 2 axial), in world mm."""
    centre = [0, 0, 0]
    centre[axis] = index
    plane = _planes(img, three(centre))[axis]
    return _Plane(f'{plane.name} {index}', plane.cut, plane.extent_mm, plane.sides)


def _draw_contour(axis, outline: np.ndarray, plane: _Plane, level: float, colour: str) -> None:
    outline_plane = outline[plane.cut].T
    if outline_plane.min() < level < outline_plane.max():
        axis.contour(
            outline_plane,
            levels=[level],
            colors=colour,
            linewidths=0.7,
            origin='lower',
            extent=plane.extent_mm,
            rasterized=True,
        )


def plot_contour_mosaic(
    img: nb.Nifti1Image,
    contour: nb.Nifti1Image,
    out_file: str | Path,
    *,
    title: str,
    level: float = 0.5,
    cuts: int = 6,
    colour: str = 'red',
) -> Path:
    """``cuts`` planes per axis (rows: sagittal, coronal, axial) of ``img`` with the ``level``
    contour of ``contour`` over them, spread over the contour's extent; one grid, any
    orientation (planes are taken in RAS+ order). A brain mask's QC view, as in fMRIPrep."""
    img, contour = nb.as_closest_canonical(img), nb.as_closest_canonical(contour)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    outline = np.asanyarray(contour.dataobj, dtype=np.float32)
    low, high = _percentile_window(data)
    figure, axes = plt.subplots(3, cuts, figsize=(1.9 * cuts, 6.2), facecolor='black')
    for row, axis_index in zip(axes, range(3), strict=True):
        for axis, index in zip(row, _cut_indices(outline > level, axis_index, cuts), strict=True):
            plane = _plane_at(img, axis_index, index)
            _draw_plane(axis, data, plane, low, high, plane.name)
            _draw_contour(axis, outline, plane, level, colour)
    return save_figure(figure, title, out_file)


#: CSS inside the flicker SVG: the subject's frame shows, then hides to reveal the template.
_FLICKER_STYLE = (
    '[id^="flicker-subject"] { animation: mrctprep-flicker 2.4s step-end infinite; }\n'
    '@keyframes mrctprep-flicker { 0% { opacity: 1; } 50% { opacity: 0; } }\n'
)


def plot_registration_flicker(
    registered: nb.Nifti1Image,
    template: nb.Nifti1Image,
    out_file: str | Path,
    *,
    title: str,
    cuts: int = 4,
) -> Path:
    """An SVG that alternates, every 1.2 s, the registered brain and the template, both on
    one grid (any orientation: planes are taken in RAS+ order) with the template's edges
    (green) drawn over each: misregistration shows as anatomy that jumps under the fixed
    edges (fMRIPrep's flicker, as an animation, so that it also plays where the SVG is shown
    as an image)."""
    registered, template = nb.as_closest_canonical(registered), nb.as_closest_canonical(template)
    # Both cropped to the template's brain (and a margin), so that the brain fills the panels.
    box = _bounding_box(np.asanyarray(template.dataobj) > 0, margin=4)
    registered, template = registered.slicer[box], template.slicer[box]
    frames = {
        'template': np.asanyarray(template.dataobj, dtype=np.float32),
        'subject': np.asanyarray(registered.dataobj, dtype=np.float32),
    }
    edges = np.asanyarray(template_edges(template).dataobj, dtype=np.float32)
    figure, axes = plt.subplots(3, cuts, figsize=(2.2 * cuts, 6.8), facecolor='black')
    figure.suptitle(title, color='white', fontsize=11)
    for placeholder in axes.flat:  # laid out without ticks, then replaced by the frames
        placeholder.axis('off')
    figure.tight_layout()
    for frame, data in frames.items():
        low, high = _percentile_window(data)
        for row, axis_index in zip(axes, range(3), strict=True):
            for n, (position, index) in enumerate(
                zip(row, _cut_indices(frames['subject'] > 0, axis_index, cuts), strict=True)
            ):
                axis = figure.add_axes(
                    position.get_position(), gid=f'flicker-{frame}-{axis_index}-{n}'
                )
                plane = _plane_at(registered, axis_index, index)
                _draw_plane(axis, data, plane, low, high, '')
                _draw_contour(axis, edges, plane, 0.6, 'lime')
                axis.text(
                    0.02,
                    0.02,
                    frame,
                    color='yellow',
                    transform=axis.transAxes,
                    fontsize=7,
                    backgroundcolor='black',
                )
    for axis in axes.flat:
        axis.remove()
    buffer = io.StringIO()
    figure.savefig(buffer, facecolor='black', format='svg', dpi=QC_DPI)
    plt.close(figure)
    svg = buffer.getvalue().replace(
        '<style type="text/css">', '<style type="text/css">' + _FLICKER_STYLE, 1
    )
    out_file = Path(out_file)
    out_file.write_text(svg)
    return out_file
