"""EfficientSCN's inference geometry: the CT in the authors' array layout, the localization
input at 6 mm, the organ box it yields, and the SCN crop at 2 mm.

Upstream works on SimpleITK images reoriented to the identity direction (LPS+: x toward the
patient's left, y posterior, z superior) as numpy arrays ``(z, y, x)``; box coordinates are
millimetres from the first voxel's outer corner along those axes (voxel ``i`` covers
``[i s, (i + 1) s)``). Every function here uses that layout: sizes, spacings and boxes are
``(z, y, x)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import nibabel as nb
import numpy as np
import numpy.typing as npt
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

FloatArray = npt.NDArray[np.float32]
Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]

LOCALIZATION_SPACING_MM = 6.0
#: Allowed localization sizes per axis (z, y, x); the first strictly larger, else the largest.
LOCALIZATION_SIZES = (tuple(range(32, 257, 16)), (32, 48, 64, 80), (32, 48, 64, 80))
#: Extra spacing factor when the scan does not fit the largest localization size.
LOCALIZATION_FIT_MARGIN = 0.02
BOX_MARGIN_MM = 10.0
SEGMENTATION_SPACING_MM = 2.0
SEGMENTATION_SPACING_TOLERANCE_MM = 0.1
#: Allowed SCN sizes per axis, upstream's x, y, z lists applied in array order.
SEGMENTATION_SIZES = ((32, 64, 96, 128, 160), (32, 64, 96, 128), (32, 64, 96, 128, 160))
SEGMENTATION_SMOOTHING_MM = 1.0
#: Headers that claim 1 x 1 x 1 mm get FLARE21's mean spacing instead (x, y, z).
UNKNOWN_SPACING_REPLACEMENT_XYZ = (0.814528640267884, 0.814528640267884, 2.52795318268203)
AIR_HU = -1024.0
LPS = ('L', 'P', 'S')


@dataclass(frozen=True)
class LpsVolume:
    """A CT as upstream's arrays hold it: ``(z, y, x)`` in LPS+ voxel order, its spacing, and
    the affine of that (x, y, z)-indexed grid, to map boxes back to the world."""

    array: FloatArray
    spacing: Triple
    affine_xyz: npt.NDArray[np.float64]


def to_lps_volume(image: nb.Nifti1Image) -> LpsVolume:
    """Reorder and flip the voxel axes to the LPS+ order closest to the affine (no resampling,
    as SimpleITK's DICOMOrient), and apply upstream's 1 x 1 x 1 mm spacing fix."""
    transform = ornt_transform(io_orientation(image.affine), axcodes2ornt(LPS))
    data = nb.apply_orientation(np.asarray(image.dataobj, dtype=np.float32), transform)
    affine = image.affine @ inv_ornt_aff(transform, image.shape[:3])
    spacing_xyz = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    if all(abs(v - 1.0) < 1e-6 for v in spacing_xyz):
        spacing_xyz = UNKNOWN_SPACING_REPLACEMENT_XYZ
    spacing = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    return LpsVolume(np.ascontiguousarray(data.transpose(2, 1, 0)), spacing, affine)


def next_allowed_size(extent: float, allowed: tuple[int, ...]) -> int:
    """The smallest allowed size strictly larger than ``extent``, else the largest."""
    return min((size for size in allowed if size > extent), default=max(allowed))


def localization_spacing(size: IntTriple, spacing: Triple) -> Triple:
    """6 mm, inflated (by the overflow ratio + 2 %) when the scan would exceed the largest
    localization size along any axis."""
    expected = [
        math.ceil(n * s / LOCALIZATION_SPACING_MM) for n, s in zip(size, spacing, strict=True)
    ]
    ratio = max(e / max(a) for e, a in zip(expected, LOCALIZATION_SIZES, strict=True))
    ratio += LOCALIZATION_FIT_MARGIN
    factor = ratio if ratio > 1 else 1.0
    return (LOCALIZATION_SPACING_MM * factor,) * 3


def size_for_spacing(size: IntTriple, spacing: Triple, new_spacing: Triple) -> IntTriple:
    return tuple(  # type: ignore[return-value]
        math.ceil(n * s / t) for n, s, t in zip(size, spacing, new_spacing, strict=True)
    )


def area_weights(in_size: int, out_size: int) -> FloatArray:
    """``(out, in)`` weights of area (box-average) resizing: output sample ``i`` averages the
    input over ``[i, i + 1) * in / out`` with fractional overlaps (TensorFlow's 'area')."""
    scale = in_size / out_size
    edges_in = np.arange(in_size + 1, dtype=np.float64)
    starts = np.arange(out_size) * scale
    ends = starts + scale
    overlap = np.clip(
        np.minimum(ends[:, None], edges_in[None, 1:])
        - np.maximum(starts[:, None], edges_in[None, :-1]),
        0,
        None,
    )
    return (overlap / scale).astype(np.float32)


def area_resize(array: FloatArray, size: IntTriple) -> FloatArray:
    """Area-resize a 3D array to ``size``, one axis at a time."""
    for axis, out_size in enumerate(size):
        weights = area_weights(array.shape[axis], out_size)
        array = np.moveaxis(np.tensordot(weights, array, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(array, dtype=np.float32)


def centre_pad(array: FloatArray, size: IntTriple, value: float) -> tuple[FloatArray, IntTriple]:
    """Pad to ``size`` (not smaller than the array), half before and half after; returns the
    padded array and the padding before each axis."""
    before = tuple((n - m) // 2 for n, m in zip(size, array.shape, strict=True))
    pads = [(b, n - m - b) for b, n, m in zip(before, size, array.shape, strict=True)]
    return np.pad(array, pads, constant_values=value), before  # type: ignore[return-value]


def network_intensity(hu: FloatArray) -> FloatArray:
    """Upstream's CT intensity: HU / 2048 clipped to [-1, 1]."""
    return np.clip(hu / 2048.0, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class LocalizationInput:
    array: FloatArray
    spacing: Triple
    padding_before: IntTriple


def localization_input(volume: LpsVolume) -> LocalizationInput:
    """The whole scan, area-resampled to the localization spacing, centre-padded with air to
    the allowed sizes, in network intensity."""
    size: IntTriple = volume.array.shape  # type: ignore[assignment]
    spacing = localization_spacing(size, volume.spacing)
    resized = area_resize(volume.array, size_for_spacing(size, volume.spacing, spacing))
    valid: IntTriple = tuple(  # type: ignore[assignment]
        next_allowed_size(n, allowed)
        for n, allowed in zip(resized.shape, LOCALIZATION_SIZES, strict=True)
    )
    padded, before = centre_pad(resized, valid, AIR_HU)
    return LocalizationInput(network_intensity(padded), spacing, before)


@dataclass(frozen=True)
class Box:
    """A box in upstream's millimetres (z, y, x) from the first voxel's outer corner."""

    start: Triple
    end: Triple

    @property
    def extent(self) -> Triple:
        return tuple(e - s for s, e in zip(self.start, self.end, strict=True))  # type: ignore[return-value]


def box_from_mask(mask: npt.NDArray[np.bool_], loc: LocalizationInput) -> Box:
    """The foreground's box (the whole input when empty), its padding removed, in mm, with
    upstream's 10 mm margin: ``start s - 10``, ``(end + 1) s + 10``."""
    start, end = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        first, last = (hits[0], hits[-1]) if hits.size else (0, mask.shape[axis] - 1)
        spacing, pad = loc.spacing[axis], loc.padding_before[axis]
        start.append(spacing * (first - pad) - BOX_MARGIN_MM)
        end.append(spacing * (last - pad + 1) + BOX_MARGIN_MM)
    return Box(tuple(start), tuple(end))  # type: ignore[arg-type]


def box_world_ras(box: Box, volume: LpsVolume) -> tuple[Triple, Triple]:
    """The box's corners in world millimetres (RAS+), as the min and max over its 8 corners.
    Upstream's millimetre ``p`` along an axis is the continuous voxel index ``p / s - 0.5``."""
    corners = []
    for pick in np.ndindex(2, 2, 2):
        zyx = [(box.start, box.end)[p][a] / volume.spacing[a] - 0.5 for a, p in enumerate(pick)]
        corners.append(volume.affine_xyz @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))
    ras = np.array(corners)[:, :3]  # a NIfTI affine maps to RAS+ world
    return tuple(ras.min(axis=0).tolist()), tuple(ras.max(axis=0).tolist())


def from_lps_array(array: npt.NDArray[Any], image: nb.Nifti1Image) -> npt.NDArray[Any]:
    """An array of :func:`to_lps_volume`'s layout back on ``image``'s own voxel grid."""
    transform = ornt_transform(axcodes2ornt(LPS), io_orientation(image.affine))
    return np.ascontiguousarray(nb.apply_orientation(array.transpose(2, 1, 0), transform))


def segmentation_spacing(box: Box) -> float:
    """2 mm, or (when the box exceeds the largest SCN size at 1.9 mm) what fits plus 0.1 mm."""
    needed = max(e / max(a) for e, a in zip(box.extent, SEGMENTATION_SIZES, strict=True))
    limit = SEGMENTATION_SPACING_MM - SEGMENTATION_SPACING_TOLERANCE_MM
    return (
        needed + SEGMENTATION_SPACING_TOLERANCE_MM if needed > limit else SEGMENTATION_SPACING_MM
    )


def segmentation_box(box: Box, spacing: float) -> tuple[Box, IntTriple]:
    """The box resized to an allowed SCN size around its centre, and that size.

    As upstream: extent ``ceil(end - start) / s`` truncated to whole voxels, the next allowed
    size, and a new box of ``centre -+ floor(size s / 2)`` millimetres."""
    size: IntTriple = tuple(  # type: ignore[assignment]
        next_allowed_size(int(math.ceil(e) / spacing), allowed)
        for e, allowed in zip(box.extent, SEGMENTATION_SIZES, strict=True)
    )
    centre = [(s + e) / 2 for s, e in zip(box.start, box.end, strict=True)]
    half = [math.floor(n * spacing / 2) for n in size]
    start = tuple(c - h for c, h in zip(centre, half, strict=True))
    end = tuple(c + h for c, h in zip(centre, half, strict=True))
    return Box(start, end), size  # type: ignore[arg-type]


def gaussian_smooth(array: FloatArray, sigma_voxels: Triple) -> FloatArray:
    """Separable Gaussian with upstream's kernel (``2 ceil(4 sigma + 0.5) + 1`` taps,
    normalised) and symmetric (edge-repeating mirror) padding."""
    from scipy.ndimage import correlate1d

    out = array
    for axis, sigma in enumerate(sigma_voxels):
        half = math.ceil(4 * sigma + 0.5)
        taps = np.arange(-half, half + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * taps**2 / sigma**2)
        out = correlate1d(out, kernel / kernel.sum(), axis=axis, mode='reflect')
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Crop:
    """The SCN's box on the CT's voxels: the in-image index range and the padding beyond."""

    start: IntTriple
    stop: IntTriple
    pad_before: IntTriple
    pad_after: IntTriple

    @property
    def padded_shape(self) -> IntTriple:
        return tuple(  # type: ignore[return-value]
            b - a + p + q
            for a, b, p, q in zip(
                self.start, self.stop, self.pad_before, self.pad_after, strict=True
            )
        )


def crop_for_box(box: Box, volume: LpsVolume) -> Crop:
    """Upstream's voxel range of a box: ``floor(start / s)`` to ``ceil((end + 1) / s)``."""
    first = [math.floor(s / sp) for s, sp in zip(box.start, volume.spacing, strict=True)]
    last = [math.ceil((e + 1) / sp) for e, sp in zip(box.end, volume.spacing, strict=True)]
    shape = volume.array.shape
    return Crop(
        start=tuple(max(f, 0) for f in first),  # type: ignore[arg-type]
        stop=tuple(min(n, s) for n, s in zip(last, shape, strict=True)),  # type: ignore[arg-type]
        pad_before=tuple(max(-f, 0) for f in first),  # type: ignore[arg-type]
        pad_after=tuple(max(n - s, 0) for n, s in zip(last, shape, strict=True)),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class SegmentationInput:
    array: FloatArray
    spacing: float
    box: Box
    crop: Crop


def segmentation_input(
    volume: LpsVolume, box: Box, spacing: float | None = None
) -> SegmentationInput:
    """The SCN's input: the CT smoothed (sigma 1 mm), cropped to the resized box (air beyond
    the image), area-resampled to the allowed size, in network intensity.
    ``spacing``: the SCN grid's (default: upstream's rule, :func:`segmentation_spacing`).

    Upstream's training crops have air beyond the image, its inference crops 0 HU. We pad
    with air at both: a network trained on air called the 0 HU slabs beside a short scan
    liver (2.2x its liver voxels in one measured crop)."""
    spacing = spacing or segmentation_spacing(box)
    scn_box, size = segmentation_box(box, spacing)
    crop = crop_for_box(scn_box, volume)
    region = tuple(slice(a, b) for a, b in zip(crop.start, crop.stop, strict=True))
    # smoothing only the crop and a margin of the kernel's reach gives the same values
    margin = [math.ceil(4 * SEGMENTATION_SMOOTHING_MM / s + 0.5) for s in volume.spacing]
    outer = tuple(
        slice(max(r.start - m, 0), min(r.stop + m, n))
        for r, m, n in zip(region, margin, volume.array.shape, strict=True)
    )
    sigma: Triple = tuple(SEGMENTATION_SMOOTHING_MM / s for s in volume.spacing)  # type: ignore[assignment]
    smoothed = gaussian_smooth(volume.array[outer], sigma)
    inner = tuple(
        slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, outer, strict=True)
    )
    pads = list(zip(crop.pad_before, crop.pad_after, strict=True))
    cropped = np.pad(smoothed[inner], pads, constant_values=AIR_HU)
    return SegmentationInput(network_intensity(area_resize(cropped, size)), spacing, scn_box, crop)


def linear_weights(in_size: int, out_size: int) -> FloatArray:
    """``(out, in)`` weights of linear resizing with half-voxel-aligned samples, clamped at the
    edges (TensorFlow's bilinear with half-pixel centres)."""
    position = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, in_size - 1)
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, low), 1 - (position - low))
    np.add.at(weights, (rows, high), position - low)
    return weights


def labels_on_crop(
    probabilities: FloatArray, crop: Crop, rows_per_chunk: int = 16
) -> npt.NDArray[np.uint8]:
    """Argmax of ``(C, z, y, x)`` probabilities linearly resized to the padded crop, its padding
    removed. Resized a few output slices at a time: the full-resolution probabilities of every
    class never exist at once."""
    shape = crop.padded_shape
    weights = [linear_weights(n, m) for n, m in zip(probabilities.shape[1:], shape, strict=True)]
    labels = np.empty(shape, dtype=np.uint8)
    for first in range(0, shape[0], rows_per_chunk):
        slab = np.tensordot(
            weights[0][first : first + rows_per_chunk], probabilities, axes=([1], [1])
        )
        slab = np.tensordot(slab, weights[1], axes=([2], [1]))  # (rows, C, x_in, y)
        slab = np.tensordot(slab, weights[2], axes=([2], [1]))  # (rows, C, y, x)
        labels[first : first + rows_per_chunk] = slab.argmax(axis=1)
    inner = tuple(
        slice(p, n - q) for p, q, n in zip(crop.pad_before, crop.pad_after, shape, strict=True)
    )
    return labels[inner]


def paste_labels(
    labels: npt.NDArray[np.uint8], crop: Crop, shape: IntTriple
) -> npt.NDArray[np.uint8]:
    """The crop's labels in a full-size volume of background."""
    full = np.zeros(shape, dtype=np.uint8)
    full[tuple(slice(a, b) for a, b in zip(crop.start, crop.stop, strict=True))] = labels
    return full


TRAINING_BOX_MARGIN_MM = 32.0


def labels_box(
    labels: npt.NDArray[np.uint8], spacing: Triple, margin_mm: float = TRAINING_BOX_MARGIN_MM
) -> Box:
    """The box of all labelled voxels of an array in :func:`to_lps_volume`'s layout, in
    upstream's millimetres, enlarged by ``margin_mm`` (training: 32 mm) on every side."""
    start, end = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(labels.any(axis=others))
        start.append(spacing[axis] * hits[0] - margin_mm)
        end.append(spacing[axis] * (hits[-1] + 1) + margin_mm)
    return Box(tuple(start), tuple(end))


def nearest_resize(labels: npt.NDArray[np.uint8], size: IntTriple) -> npt.NDArray[np.uint8]:
    """Nearest-neighbour resizing with half-voxel-aligned samples."""
    for axis, out_size in enumerate(size):
        index = np.minimum(
            ((np.arange(out_size) + 0.5) * labels.shape[axis] / out_size).astype(int),
            labels.shape[axis] - 1,
        )
        labels = np.take(labels, index, axis=axis)
    return labels


def smooth_labels(labels: npt.NDArray[np.uint8], classes: int) -> npt.NDArray[np.uint8]:
    """Upstream's label smoothing: one-hot, Gaussian sigma 1 voxel per class, argmax."""
    smoothed = [
        gaussian_smooth((labels == c).astype(np.float32), (1.0, 1.0, 1.0)) for c in range(classes)
    ]
    return np.argmax(np.stack(smoothed), axis=0).astype(np.uint8)


def training_samples(
    volume: LpsVolume, labels: npt.NDArray[np.uint8], classes: int, spacing: float | None = None
) -> list[tuple[SegmentationInput, npt.NDArray[np.uint8]]]:
    """SCN training crops of one CT, prepared as at inference (smoothing, crop, area
    resampling; ``spacing`` coarser than upstream's 2 mm for small CPU runs), with the labels on
    the same grid (nearest, then smoothed): the labels' box with upstream's 32 mm margin, and
    with inference's 10 mm when that gives another crop size.

    Upstream's 361 CTs frame their crops in many sizes; a few CTs frame them in one, and the
    spatial configuration branch, which sees the whole crop at 1/4 resolution, learnt that
    framing: trained 250 steps on the 32 mm crop (liver Dice 0.91 there), it found no organ in
    the 10 mm crop of the same CT."""
    samples: list[tuple[SegmentationInput, npt.NDArray[np.uint8]]] = []
    for margin in (TRAINING_BOX_MARGIN_MM, BOX_MARGIN_MM):
        box = labels_box(labels, volume.spacing, margin)
        image = segmentation_input(volume, box, spacing=spacing or segmentation_spacing(box))
        if any(image.array.shape == known.array.shape for known, _ in samples):
            continue
        crop = image.crop
        region = tuple(slice(a, b) for a, b in zip(crop.start, crop.stop, strict=True))
        pads = list(zip(crop.pad_before, crop.pad_after, strict=True))
        cropped = np.pad(labels[region], pads, constant_values=0)
        resized = nearest_resize(cropped, image.array.shape)  # type: ignore[arg-type]
        samples.append((image, smooth_labels(resized, classes)))
    return samples


#: Training-time smoothing of the localization's source image (upstream's sigma, in mm).
LOCALIZATION_TRAINING_SMOOTHING_MM = 3.0


def localization_training_sample(
    volume: LpsVolume, labels: npt.NDArray[np.uint8]
) -> tuple[LocalizationInput, npt.NDArray[np.uint8]]:
    """A localization training input: the scan smoothed (Gaussian, 3 mm) and prepared as at
    inference, and the organs merged into one foreground on the same grid (the share of each
    6 mm voxel they cover, area-resized as the image is, then > 1/2)."""
    sigma = tuple(LOCALIZATION_TRAINING_SMOOTHING_MM / s for s in volume.spacing)
    smoothed = LpsVolume(
        gaussian_smooth(volume.array, sigma),  # type: ignore[arg-type]
        volume.spacing,
        volume.affine_xyz,
    )
    image = localization_input(smoothed)
    size: IntTriple = volume.array.shape  # type: ignore[assignment]
    share = area_resize(
        (labels > 0).astype(np.float32), size_for_spacing(size, volume.spacing, image.spacing)
    )
    padded, _ = centre_pad(share, image.array.shape, 0.0)  # type: ignore[arg-type]
    return image, (padded > 0.5).astype(np.uint8)
