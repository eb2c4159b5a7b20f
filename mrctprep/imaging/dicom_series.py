"""CT DICOM series to volumes in HU: grouping, slice order, rescale, gantry tilt and spacing.

Geometry (DICOM PS3.3 C.7.6.2): ImageOrientationPatient holds the direction along a row (the
column index grows along it) and the direction down a column, ImagePositionPatient the centre
of a slice's first pixel, in patient LPS millimetres. Slices are ordered by their distance
along the normal of those two directions, never by file name or InstanceNumber.

A gantry-tilted acquisition also moves each slice sideways within its plane, which makes a
sheared grid that NIfTI cannot hold; unequal slice steps make a grid that no affine holds.
Both are resampled, as dcm2niix does, onto the orthogonal grid spanned by the row, column and
normal directions, with uniform steps along the normal.

An enhanced (multi-frame) CT holds a whole series in one file, with each frame's geometry and
rescale in functional groups (PS3.3 C.7.6.16): shared ones, and per-frame ones that override
them. Each frame becomes a header of its own, as if it were a single-frame file, so frames go
through the same grouping, sorting and checks as slices in files.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mrctprep import __version__
from mrctprep.imaging.dicom import LPS_FROM_RAS
from mrctprep.imaging.hounsfield import PADDING_FILL_HU, to_int16

#: File name endings that mark DICOM files lacking the 128-byte preamble and 'DICM' magic.
DICOM_SUFFIXES = ('.dcm', '.dicom', '.ima')

#: DICOM attributes copied into the BIDS sidecar: the acquisition facts that CT
#: harmonization needs. Nothing that identifies the patient is among them.
ACQUISITION_KEYS = (
    'Manufacturer',
    'ManufacturerModelName',
    'ConvolutionKernel',
    'KVP',
    'XRayTubeCurrent',
    'ExposureTime',
    'Exposure',
    'CTDIvol',
    'SliceThickness',
    'SpacingBetweenSlices',
    'ReconstructionDiameter',
    'ContrastBolusAgent',
)

_NATIVE_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Slices whose steps differ by less than this fraction of the step are evenly spaced.
_SPACING_TOLERANCE = 0.01
#: In-plane slice offsets below this fraction of a pixel are rounding, not gantry tilt.
_TILT_TOLERANCE_PIXELS = 0.02
_GEOMETRY_DECIMALS = 4
#: Values larger than this are left in the file until needed (pixel data, above all).
_DEFER_BYTES = 16384


class DicomSeriesError(ValueError):
    """A series that cannot become one CT volume; the message says why, in one line."""


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class DicomFile:
    """One DICOM image and its header (pixel data deferred: located, not read): a file, or
    one frame of a multi-frame file with the header that its functional groups give it."""

    path: Path
    header: Dataset
    #: The frame's index (0-based) in a multi-frame file; None for a single-frame file.
    frame: int | None = None

    @property
    def name(self) -> str:
        """``IM0001.dcm``, or ``ct.dcm frame 3`` (1-based, as DICOM counts frames)."""
        return self.path.name if self.frame is None else f'{self.path.name} frame {self.frame + 1}'

    def text(self, keyword: str) -> str:
        return str(self.header.get(keyword, '') or '').strip()

    @property
    def study_key(self) -> tuple[str, str] | None:
        """(PatientID, StudyInstanceUID), or None when anonymisation emptied either."""
        patient, study = self.text('PatientID'), self.text('StudyInstanceUID')
        return (patient, study) if patient and study else None

    def series_key(self) -> tuple:
        """Files with equal keys belong to one volume.

        Without a SeriesInstanceUID the folder stands in for it, so that anonymised series
        in different folders never merge; within a UID, geometry splits what one volume
        cannot hold (mixed orientations or image sizes).
        """
        uid = self.text('SeriesInstanceUID') or f'(no SeriesInstanceUID) {self.path.parent}'
        return (
            uid,
            _rounded(self.header.get('ImageOrientationPatient')),
            self.header.get('Rows'),
            self.header.get('Columns'),
            _rounded(self.header.get('PixelSpacing')),
        )


@dataclass
class DicomSeries:
    """The files of one would-be volume."""

    files: list[DicomFile] = field(default_factory=list)

    @property
    def header(self) -> Dataset:
        return self.files[0].header

    @property
    def folders(self) -> set[Path]:
        return {file.path.parent for file in self.files}

    def describe(self) -> str:
        """``series 2 'HEAD STD+' (28 files)``: enough to tell series apart, nothing personal."""
        number = self.files[0].text('SeriesNumber')
        description = self.files[0].text('SeriesDescription')
        named = ''.join(
            [f' {number}' if number else '', f" '{description}'" if description else '']
        )
        paths = len({file.path for file in self.files})
        frames = len(self.files)
        count = f'{paths} file{"s"[: paths > 1]}'
        if paths != frames:
            count = f'{frames} frames in {count}'
        return f'series{named} ({count})'

    def unusable_reason(self) -> str | None:
        """Why this series is not a CT volume, or None when it may be one."""
        modality = self.files[0].text('Modality')
        if modality != 'CT':
            return f'modality {modality or "(missing)"}, not CT'
        if 'LOCALIZER' in [str(v).upper() for v in self.header.get('ImageType', [])]:
            return 'a localizer (scout) image, not a volume'
        if int(self.header.get('NumberOfFrames', 1) or 1) > 1:
            return 'multi-frame DICOM without per-frame functional groups (no frame geometry)'
        required = ('ImagePositionPatient', 'ImageOrientationPatient', 'PixelSpacing', 'Rows')
        if any(self.header.get(keyword) is None for keyword in required):
            return (
                'no slice geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing)'
            )
        if len(self.files) < 2:
            return 'a single slice, not a volume'
        return None


@dataclass(frozen=True)
class SliceSpacing:
    """The steps between consecutive slices along the normal, and what they imply."""

    steps: np.ndarray
    #: The step of the output grid: the most common step (the finer one on a tie).
    spacing: float
    #: (index of the slice before the gap, number of slices missing there).
    missing: tuple[tuple[int, int], ...]
    #: Steps that are neither the spacing nor a multiple of it.
    uneven: bool

    @property
    def uniform(self) -> bool:
        return not self.missing and not self.uneven


@dataclass(frozen=True)
class CTVolume:
    """A converted series: int16 HU image, BIDS sidecar fields and what happened on the way."""

    image: nb.Nifti1Image
    sidecar: dict[str, Any]
    warnings: tuple[str, ...]
    #: HU of the voxels outside the reconstruction circle still in the image, if any.
    padding_value: float | None


@dataclass(frozen=True)
class _Slices:
    """A series' decodable slices, sorted along the slice normal."""

    files: list[DicomFile]
    #: (slice, 3): the centre of each slice's first pixel, LPS mm.
    positions: np.ndarray
    #: (slice, row, column) HU.
    stack: np.ndarray
    #: The HU range that the declared PixelPaddingValue (and its range limit) stands for.
    padding_range: tuple[float, float] | None
    #: Every file left out: beside the series (header unreadable) or in it (pixels undecodable).
    skipped: list[SkippedFile]
    undecodable: list[SkippedFile]


@dataclass(frozen=True)
class _SliceGeometry:
    """Where the sorted slices lie, in LPS millimetres, and whether a NIfTI affine holds them."""

    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    #: (between rows, between columns).
    pixel_spacing: tuple[float, float]
    #: Each slice's distance along the normal.
    distances: np.ndarray
    #: Each slice's first pixel from the first slice's, along the row and column directions.
    in_plane: np.ndarray
    spacing: SliceSpacing
    tilted: bool
    #: Degrees, from the last slice's in-plane offset over the stack's length.
    measured_tilt: float

    @property
    def resampled(self) -> bool:
        """A tilted or unevenly spaced stack holds no affine: it goes onto an orthogonal grid."""
        return self.tilted or not self.spacing.uniform


def is_dicom_file(path: Path) -> bool:
    """A Part 10 file ('DICM' after the preamble), or one named like a DICOM file."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open('rb') as stream:
            stream.seek(128)
            return stream.read(4) == b'DICM'
    except OSError:
        return False


def read_headers(paths: Iterable[Path]) -> tuple[list[DicomFile], list[SkippedFile]]:
    """The headers of ``paths``; files that pydicom cannot parse come back as skipped."""
    files, skipped = [], []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                header = pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=True)
            header.get('SOPClassUID')  # parsing is lazy: touch the header now
        except Exception as exc:  # pydicom raises many types for damaged files
            skipped.append(SkippedFile(path, f'not readable as DICOM ({_reason(exc)})'))
            continue
        if 'SOPClassUID' not in header and 'Modality' not in header:
            skipped.append(SkippedFile(path, 'no SOPClassUID or Modality (truncated?)'))
            continue
        if 'PerFrameFunctionalGroupsSequence' in header:
            files.extend(_frames(path, header))
        else:
            files.append(DicomFile(path, header))
    return files, skipped


#: The multi-frame file's own elements that its frames' headers leave out.
_MULTI_FRAME_TAGS = {
    Tag(keyword)
    for keyword in (
        'PixelData',
        'NumberOfFrames',
        'SharedFunctionalGroupsSequence',
        'PerFrameFunctionalGroupsSequence',
    )
}
#: Enhanced CT names some acquisition facts differently (CT Exposure macro); same units.
_ENHANCED_NAMES = {
    'ExposureTimeInms': 'ExposureTime',
    'XRayTubeCurrentInmA': 'XRayTubeCurrent',
    'ExposureInmAs': 'Exposure',
}


def _frames(path: Path, header: Dataset) -> list[DicomFile]:
    """One single-frame header per frame: the file's own elements, then those of the shared
    functional groups, then the frame's own (each macro's attributes, lifted to the top)."""
    common = Dataset()
    common.file_meta = header.file_meta
    for tag in header.keys():
        if tag not in _MULTI_FRAME_TAGS:
            common[tag] = header[tag]
    shared = header.get('SharedFunctionalGroupsSequence') or [Dataset()]
    frames = []
    for index, groups in enumerate(header.PerFrameFunctionalGroupsSequence):
        frame = Dataset()
        frame.file_meta = header.file_meta
        frame.update(common)
        _lift_functional_groups(frame, shared[0])
        _lift_functional_groups(frame, groups)
        frames.append(DicomFile(path, frame, index))
    return frames


def _lift_functional_groups(frame: Dataset, groups: Dataset) -> None:
    """Copy each functional group macro's attributes (Plane Position, Pixel Measures, Pixel
    Value Transformation, CT Exposure, ...) onto ``frame``; nested sequences stay out."""
    for macro in groups:
        if macro.VR != 'SQ' or not macro.value:
            continue
        for element in macro.value[0]:
            if element.VR == 'SQ':
                continue
            frame[element.tag] = element
            alias = _ENHANCED_NAMES.get(element.keyword)
            if alias:
                setattr(frame, alias, element.value)


def group_series(files: Iterable[DicomFile]) -> list[DicomSeries]:
    """Files grouped into would-be volumes (see :meth:`DicomFile.series_key`)."""
    groups: dict[tuple, DicomSeries] = {}
    for file in files:
        groups.setdefault(file.series_key(), DicomSeries()).files.append(file)
    return sorted(
        groups.values(),
        key=lambda s: (_as_number(s.files[0].text('SeriesNumber')), str(s.files[0].path)),
    )


def analyse_slice_spacing(distances: np.ndarray) -> SliceSpacing:
    """Classify the steps between sorted slice distances: even, missing slices, or uneven.

    >>> spacing = analyse_slice_spacing(np.array([0.0, 2, 4, 8, 10]))
    >>> float(spacing.spacing), spacing.missing, spacing.uneven
    (2.0, ((2, 1),), False)
    """
    steps = np.diff(distances)
    values, counts = np.unique(np.round(steps, 2), return_counts=True)
    most_common = float(values[counts == counts.max()].min())
    tolerance = max(_SPACING_TOLERANCE * most_common, 1e-3)
    even = np.abs(steps - most_common) <= tolerance
    spacing = float(steps[even].mean())
    ratio = steps / spacing
    multiple = (
        ~even
        & (np.round(ratio) >= 2)
        & (np.abs(steps - np.round(ratio) * spacing) <= tolerance * np.round(ratio))
    )
    missing = tuple((int(k), int(round(ratio[k])) - 1) for k in np.flatnonzero(multiple))
    return SliceSpacing(steps, spacing, missing, bool(np.any(~even & ~multiple)))


def convert_series(
    series: DicomSeries, *, name: str, unreadable: Sequence[SkippedFile] = ()
) -> CTVolume:
    """Read, sort, rescale and (where needed) resample a CT series into an int16 HU volume.

    ``name`` names the series in messages. Files whose pixels cannot be decoded are skipped
    with a warning, unless leaving them out (or leaving out ``unreadable``, the files beside
    the series whose headers could not be read) opens a gap in the stack: then the series is
    refused, since interpolating over a damaged file would hide it.
    """
    reason = series.unusable_reason()
    if reason:
        raise DicomSeriesError(f'{name}: {reason}')
    directions = _directions(series.header)
    slices = _sorted_slices(series, directions[2], unreadable, name=name)
    geometry = _slice_geometry(series.header, directions, slices, name=name)
    conversion = _conversion_record(slices, geometry)
    padding_value = _padding_left_in_volume(slices, geometry, conversion)
    image, slice_spacing = _scanner_image(slices, geometry, conversion, name=name)
    sidecar = _sidecar(series.header, slices.files, conversion, slice_spacing, padding_value)
    return CTVolume(image, sidecar, _conversion_messages(slices, geometry), padding_value)


def _sorted_slices(
    series: DicomSeries, normal: np.ndarray, unreadable: Sequence[SkippedFile], *, name: str
) -> _Slices:
    """The series' decodable slices in order along ``normal``."""
    positions = np.array([[float(v) for v in f.header.ImagePositionPatient] for f in series.files])
    order = np.argsort(positions @ normal, kind='stable')
    files = [series.files[k] for k in order]
    pixels, padding_range, undecodable = _read_slices(files)
    skipped = [*unreadable, *undecodable]
    kept = [k for k, decoded in enumerate(pixels) if decoded is not None]
    if len(kept) < 2:
        raise DicomSeriesError(
            f'{name}: fewer than 2 readable slices ({_describe_skipped(skipped)})'
        )
    return _Slices(
        files=[files[k] for k in kept],
        positions=positions[order][kept],
        stack=np.stack([decoded for decoded in pixels if decoded is not None]),
        padding_range=padding_range,
        skipped=skipped,
        undecodable=undecodable,
    )


def _slice_geometry(
    header: Dataset,
    directions: tuple[np.ndarray, np.ndarray, np.ndarray],
    slices: _Slices,
    *,
    name: str,
) -> _SliceGeometry:
    """Where the slices lie; refuses stacks that are two acquisitions or have lost slices."""
    row_dir, col_dir, normal = directions
    row_spacing, col_spacing = (float(v) for v in header.PixelSpacing)
    distances = slices.positions @ normal
    steps = np.diff(distances)
    if np.any(steps < 1e-2):
        k = int(np.argmin(steps))
        raise DicomSeriesError(
            f'{name}: {slices.files[k].name} and {slices.files[k + 1].name} lie at '
            'the same position: two acquisitions mixed in one series'
        )
    spacing = analyse_slice_spacing(distances)
    if slices.skipped and spacing.missing:
        raise DicomSeriesError(
            f'{name}: skipping unreadable {_describe_skipped(slices.skipped)} leaves a gap of '
            f'{sum(n for _, n in spacing.missing)} slice(s); series refused'
        )
    offsets = slices.positions - slices.positions[0]
    in_plane = np.stack([offsets @ row_dir, offsets @ col_dir], axis=1)
    return _SliceGeometry(
        row_dir=row_dir,
        col_dir=col_dir,
        normal=normal,
        pixel_spacing=(row_spacing, col_spacing),
        distances=distances,
        in_plane=in_plane,
        spacing=spacing,
        tilted=bool(
            np.abs(in_plane).max() > _TILT_TOLERANCE_PIXELS * min(row_spacing, col_spacing)
        ),
        measured_tilt=math.degrees(
            math.atan2(np.linalg.norm(in_plane[-1]), distances[-1] - distances[0])
        ),
    )


def _conversion_record(slices: _Slices, geometry: _SliceGeometry) -> dict[str, Any]:
    """How the series was read: the sidecar's ``Conversion``, to which later steps add."""
    spacing = geometry.spacing
    conversion: dict[str, Any] = {
        'SourceFormat': 'DICOM',
        'Reader': f'pydicom {pydicom.__version__}',
        'TransferSyntax': sorted({_transfer_syntax(f.header) for f in slices.files}),
        'SlicesSortedBy': 'ImagePositionPatient along the slice normal',
        'SliceCount': len(slices.files),
        'SliceSpacings': sorted({round(float(s), 4) for s in spacing.steps}),
        'GantryTiltMeasured': round(geometry.measured_tilt, 3),
        'GantryTiltCorrected': geometry.tilted,
        'SliceSpacingResampled': not spacing.uniform,
    }
    frames = [file for file in slices.files if file.frame is not None]
    if frames:
        conversion['MultiFrameFiles'] = sorted({file.path.name for file in frames})
        conversion['FramesRead'] = len(frames)
    if slices.skipped:
        conversion['SkippedFiles'] = [f'{s.path.name}: {s.reason}' for s in slices.skipped]
    if spacing.missing:
        conversion['MissingSlices'] = [
            {'AfterSlice': k + 1, 'Count': count} for k, count in spacing.missing
        ]
    return conversion


def _conversion_messages(slices: _Slices, geometry: _SliceGeometry) -> tuple[str, ...]:
    """The warnings of a conversion: files skipped, slices interpolated, the grid resampled."""
    spacing = geometry.spacing
    messages = [f'skipped {s.path.name}: {s.reason}' for s in slices.undecodable]
    if spacing.missing:
        messages.append(
            f'{sum(c for _, c in spacing.missing)} missing slice(s) (after slice(s) '
            f'{", ".join(str(k + 1) for k, _ in spacing.missing)}): interpolated'
        )
    if spacing.uneven:
        messages.append(
            f'unequal slice spacing ({spacing.steps.min():.2f}-{spacing.steps.max():.2f} mm): '
            f'resampled to {spacing.spacing:.2f} mm, the most common step'
        )
    if geometry.tilted:
        messages.append(
            f'gantry tilt of {geometry.measured_tilt:.1f} degrees: resampled to an orthogonal grid'
        )
    return tuple(messages)


def _padding_left_in_volume(
    slices: _Slices, geometry: _SliceGeometry, conversion: dict[str, Any]
) -> float | None:
    """The declared padding value (HU) if the volume keeps padding voxels, else None.

    A stack about to be resampled has its padding set to air instead: interpolating padding
    into the body's edge would make values that are neither.
    """
    if slices.padding_range is None:
        return None
    low, high = slices.padding_range
    padding = (slices.stack >= low) & (slices.stack <= high)
    if geometry.resampled:
        slices.stack[padding] = PADDING_FILL_HU
        conversion['PaddingReplacedBeforeResampling'] = {
            'PixelPaddingValue': low,
            'ReplacedWith': PADDING_FILL_HU,
        }
        return None
    return low if padding.any() else None


def _scanner_image(
    slices: _Slices, geometry: _SliceGeometry, conversion: dict[str, Any], *, name: str
) -> tuple[nb.Nifti1Image, float]:
    """The int16 HU image in scanner space, on a grid an affine holds; and its slice spacing."""
    stack, grid_offset, slice_spacing = _orthogonal_stack(slices, geometry, conversion)
    row_spacing, col_spacing = geometry.pixel_spacing
    lps_affine = np.eye(4)
    lps_affine[:3, 0] = geometry.row_dir * col_spacing
    lps_affine[:3, 1] = geometry.col_dir * row_spacing
    lps_affine[:3, 2] = geometry.normal * slice_spacing
    lps_affine[:3, 3] = (
        slices.positions[0] + grid_offset[0] * geometry.row_dir + grid_offset[1] * geometry.col_dir
    )
    affine = LPS_FROM_RAS @ lps_affine
    # stack is (slice, row, column); NIfTI's axes are (column, row, slice).
    hu = to_int16(stack, name=name).transpose(2, 1, 0)
    image = nb.Nifti1Image(hu, affine)
    image.set_qform(affine, code='scanner')
    image.set_sform(affine, code='scanner')
    image.header.set_xyzt_units('mm')
    return image, slice_spacing


def _orthogonal_stack(
    slices: _Slices, geometry: _SliceGeometry, conversion: dict[str, Any]
) -> tuple[np.ndarray, tuple[float, float], float]:
    """The stack on an orthogonal, evenly spaced grid: its first pixel's offset from the first
    slice's (mm, along rows and columns) and its slice spacing."""
    if not geometry.resampled:
        distances = geometry.distances
        slice_spacing = float(distances[-1] - distances[0]) / (len(slices.files) - 1)
        return slices.stack, (0.0, 0.0), slice_spacing
    spacing = geometry.spacing.spacing
    conversion['Interpolation'] = 'linear'
    conversion['ResampledSliceSpacing'] = round(spacing, 6)
    in_plane = geometry.in_plane if geometry.tilted else np.zeros_like(geometry.in_plane)
    stack, grid_offset = resample_to_orthogonal_grid(
        slices.stack,
        geometry.distances,
        in_plane,
        geometry.pixel_spacing,
        spacing,
        fill=PADDING_FILL_HU,
    )
    return stack, grid_offset, spacing


def _sidecar(
    header: Dataset,
    files: Sequence[DicomFile],
    conversion: dict[str, Any],
    slice_spacing: float,
    padding_value: float | None,
) -> dict[str, Any]:
    """The BIDS sidecar: acquisition facts, the volume's spacing and units, the conversion."""
    sidecar = acquisition_metadata([f.header for f in files], conversion)
    sidecar['SpacingBetweenSlices'] = round(slice_spacing, 6)
    tilt = header.get('GantryDetectorTilt')
    if tilt is not None:
        conversion['GantryDetectorTilt'] = float(tilt)
    if padding_value is not None:
        sidecar['PixelPaddingValue'] = padding_value
    sidecar.update(
        Units='HU',
        ConversionSoftware='mrctprep',
        ConversionSoftwareVersion=__version__,
        Conversion=conversion,
    )
    return sidecar


def resample_to_orthogonal_grid(
    stack: np.ndarray,
    distances: np.ndarray,
    in_plane_offsets: np.ndarray,
    pixel_spacing: tuple[float, float],
    slice_spacing: float,
    *,
    fill: float,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resample slices at ``distances`` along the normal onto evenly spaced, aligned slices.

    ``stack`` is (slice, row, column); ``in_plane_offsets`` gives, per slice, how far its
    first pixel lies from the first slice's along the row and column directions (mm), which
    gantry tilt makes grow with the distance. The output grid spans every slice's footprint
    (outside a footprint: ``fill``) with the input's pixel spacing, and output slices start
    at the first input slice, ``slice_spacing`` apart. Each output voxel is interpolated
    linearly between the two input slices around it, projected along the normal.
    Returns the resampled stack and the offset (mm, along rows and columns) of its first
    pixel from the first input slice's.
    """
    row_spacing, col_spacing = pixel_spacing
    n_slices, rows, cols = stack.shape
    along_rows, down_columns = in_plane_offsets[:, 0], in_plane_offsets[:, 1]
    start = (float(along_rows.min()), float(down_columns.min()))
    out_cols = int(round((along_rows.max() - start[0]) / col_spacing)) + cols
    out_rows = int(round((down_columns.max() - start[1]) / row_spacing)) + rows
    count = int(math.floor((distances[-1] - distances[0]) / slice_spacing + 1e-3)) + 1
    targets = distances[0] + slice_spacing * np.arange(count)

    def aligned(k: int) -> np.ndarray:
        # Output pixel (r, c) lies at input pixel (r + row_shift, c + col_shift) of slice k.
        row_shift = (start[1] - down_columns[k]) / row_spacing
        col_shift = (start[0] - along_rows[k]) / col_spacing
        return shift_image(stack[k], (row_shift, col_shift), (out_rows, out_cols), fill=fill)

    out = np.empty((count, out_rows, out_cols), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}
    for m, target in enumerate(targets):
        below = int(np.clip(np.searchsorted(distances, target, side='right') - 1, 0, n_slices - 2))
        weight = float(
            np.clip((target - distances[below]) / (distances[below + 1] - distances[below]), 0, 1)
        )
        for k in list(cache):
            if k < below:
                del cache[k]
        for k in (below, below + 1):
            if k not in cache:
                cache[k] = aligned(k)
        out[m] = (1 - weight) * cache[below] + weight * cache[below + 1]
    return out, start


def shift_image(
    image: np.ndarray, shift: tuple[float, float], shape: tuple[int, int], *, fill: float
) -> np.ndarray:
    """``out[r, c] = image[r + shift[0], c + shift[1]]``, bilinear, ``fill`` outside ``image``.

    A translation only, so the four neighbours of every output pixel are the same array
    offsets: four slices of one padded copy instead of a general (and slower) resampler.
    Whole-pixel shifts copy values exactly; within a pixel of the edge, values blend with
    ``fill``.

    >>> shift_image(np.array([[0.0, 10], [20, 30]]), (0.5, -1), (2, 3), fill=-1).tolist()
    [[-1.0, 10.0, 20.0], [-1.0, 9.5, 14.5]]
    """
    whole = [math.floor(s) for s in shift]
    fraction = [s - w for s, w in zip(shift, whole, strict=True)]
    # canvas[r, c] = image[r + whole[0], c + whole[1]], one extra row and column for the blend.
    canvas = np.full((shape[0] + 1, shape[1] + 1), fill, dtype=np.float32)
    top, left = max(-whole[0], 0), max(-whole[1], 0)
    bottom = min(image.shape[0] - whole[0], canvas.shape[0])
    right = min(image.shape[1] - whole[1], canvas.shape[1])
    if bottom > top and right > left:
        canvas[top:bottom, left:right] = image[
            top + whole[0] : bottom + whole[0], left + whole[1] : right + whole[1]
        ]
    rows = (
        canvas[:-1]
        if fraction[0] == 0
        else (1 - fraction[0]) * canvas[:-1] + fraction[0] * canvas[1:]
    )
    if fraction[1] == 0:
        return rows[:, :-1]
    return (1 - fraction[1]) * rows[:, :-1] + fraction[1] * rows[:, 1:]


def acquisition_metadata(headers: Sequence[Dataset], conversion: dict[str, Any]) -> dict[str, Any]:
    """The BIDS sidecar fields of :data:`ACQUISITION_KEYS` present in ``headers``.

    DICOM counts ExposureTime in ms, BIDS in seconds. Values that vary between slices (tube
    current under dose modulation) are averaged, except the slice thickness, where the most
    common value (the thinner on a tie) is kept; their range goes into ``conversion``.
    """
    sidecar: dict[str, Any] = {'Modality': 'CT'}
    varying = {}
    for keyword in ACQUISITION_KEYS:
        values = [_bids_value(keyword, h.get(keyword)) for h in headers]
        values = [v for v in values if v is not None]
        if not values:
            continue
        if all(v == values[0] for v in values):
            sidecar[keyword] = values[0]
            continue
        if not all(isinstance(v, float | int) for v in values):
            sidecar[keyword] = Counter(values).most_common(1)[0][0]
        elif keyword == 'SliceThickness':
            counts = Counter(values)
            top = max(counts.values())
            sidecar[keyword] = min(v for v, c in counts.items() if c == top)
        else:
            sidecar[keyword] = round(float(np.mean(values)), 4)
        numeric = all(isinstance(v, float | int) for v in values)
        varying[keyword] = [min(values), max(values)] if numeric else sorted(set(values))
    if varying:
        conversion['VaryingAcrossSlices'] = varying
    return sidecar


def _bids_value(keyword: str, value: Any) -> Any:
    if value is None or value == '':
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        return '\\'.join(str(v) for v in value)
    if keyword == 'ExposureTime':
        return float(value) / 1000
    if isinstance(value, int | float):
        number = float(value)
        return int(number) if number.is_integer() else number
    return str(value).strip() or None


def _read_slices(
    files: Sequence[DicomFile],
) -> tuple[list[np.ndarray | None], tuple[float, float] | None, list[SkippedFile]]:
    """Each file's pixels in HU (float32; None when undecodable) and the padding range in HU.

    RescaleSlope/Intercept are applied per slice, as they may differ between slices.
    """
    slices: list[np.ndarray | None] = []
    skipped: list[SkippedFile] = []
    padding_range = None
    shape = (int(files[0].header.Rows), int(files[0].header.Columns))
    for file in files:
        dataset = file.header
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                stored = _stored_pixels(file)
        except Exception as exc:  # truncated files and broken codecs raise many types
            skipped.append(SkippedFile(file.path, f'pixel data not decodable ({_reason(exc)})'))
            slices.append(None)
            continue
        if stored.shape != shape:
            skipped.append(SkippedFile(file.path, f'{stored.shape} pixels, not {shape}'))
            slices.append(None)
            continue
        slope = float(dataset.get('RescaleSlope', 1) or 1)
        intercept = float(dataset.get('RescaleIntercept', 0) or 0)
        slices.append(stored.astype(np.float32) * np.float32(slope) + np.float32(intercept))
        padding = dataset.get('PixelPaddingValue')
        if padding is not None and padding_range is None:
            limit = dataset.get('PixelPaddingRangeLimit', padding)
            ends = sorted((float(padding) * slope + intercept, float(limit) * slope + intercept))
            padding_range = (ends[0], ends[1])
    return slices, padding_range, skipped


def _stored_pixels(file: DicomFile) -> np.ndarray:
    """The stored values of a slice (a file or a frame), read without keeping them in the header.

    Uncompressed little-endian 16-bit pixels are read straight from the file: pydicom's
    generic path costs more than all the rest of a conversion. Compressed syntaxes (JPEG 2000,
    JPEG-LS, JPEG lossless, RLE) go through pydicom's decoders on a fresh read of the file.
    """
    if file.frame is not None:  # decodes this frame only, whatever the transfer syntax
        return pixel_array(file.path, index=file.frame)
    header = file.header
    syntax = getattr(getattr(header, 'file_meta', None), 'TransferSyntaxUID', None)
    element = header.get_item('PixelData', keep_deferred=True)
    if not isinstance(element, DataElement | RawDataElement):
        raise ValueError('no PixelData')
    if syntax not in _NATIVE_LITTLE_ENDIAN or header.BitsAllocated != 16:
        return pydicom.dcmread(file.path, force=True).pixel_array
    rows, columns = int(header.Rows), int(header.Columns)
    expected = rows * columns * 2
    raw = element.value
    if raw is None and isinstance(element, RawDataElement):
        # A deferred element: its value is still in the file.
        with file.path.open('rb') as stream:
            stream.seek(element.value_tell)
            raw = stream.read(expected)
    if len(raw) < expected:
        raise ValueError(f'pixel data truncated ({len(raw)} of {expected} bytes)')
    dtype = '<i2' if header.PixelRepresentation == 1 else '<u2'
    values = np.frombuffer(raw, dtype, count=rows * columns).reshape(rows, columns)
    unused_bits = 16 - int(header.BitsStored)
    if unused_bits:
        # Bits above BitsStored may hold overlays: shift them out (sign-extending signed data).
        values = (values << unused_bits) >> unused_bits
    return values


def _directions(header: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (LPS) along a row, down a column, and their normal."""
    orientation = np.asarray([float(v) for v in header.ImageOrientationPatient])
    row_dir = orientation[:3] / np.linalg.norm(orientation[:3])
    col_dir = orientation[3:] / np.linalg.norm(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    return row_dir, col_dir, normal / np.linalg.norm(normal)


def _transfer_syntax(header: Dataset) -> str:
    uid = getattr(getattr(header, 'file_meta', None), 'TransferSyntaxUID', None)
    return uid.name if uid else 'unknown'


def _describe_skipped(skipped: Sequence[SkippedFile]) -> str:
    if not skipped:
        return 'no file skipped'
    names = ', '.join(s.path.name for s in skipped[:3])
    more = f' and {len(skipped) - 3} more' if len(skipped) > 3 else ''
    return f'file(s) {names}{more} ({skipped[0].reason})'


def _rounded(values: Any) -> tuple[float, ...] | None:
    if values is None:
        return None
    return tuple(round(float(v), _GEOMETRY_DECIMALS) for v in values)


def _as_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def _reason(exc: Exception) -> str:
    """The first line of an error, without pydicom's list of possible causes."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first_line.split(' - ')[0]
