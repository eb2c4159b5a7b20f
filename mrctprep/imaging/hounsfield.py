"""Hounsfield units: recognising them, fixing an unambiguous offset, and padding values.

A CT in HU has air at -1000 and soft tissue at 0-100. Scanners store 12-bit unsigned values
(HU + 1024) and leave the rescale to the reader; a converter that forgets it gives a volume
whose air sits at +24. Outside the reconstruction circle scanners write a padding value far
below air (-1500 GE, -2048 Siemens, -3024 Philips), which must not be read or interpolated as
tissue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nibabel as nb
import numpy as np

from mrctprep.imaging.orientation import reorient_to_ras

#: Where the air of a CT in HU lies (air is -1000; noise and beam hardening spread it).
AIR_RANGE_HU = (-1100.0, -900.0)
#: Where fat, water and soft tissue lie.
SOFT_TISSUE_RANGE_HU = (-200.0, 300.0)
#: Above this a voxel is the patient's body (tissue, not air or lung parenchyma at its lightest).
BODY_HU = -500.0
#: Stored = HU + 1024 in the usual 12-bit unsigned storage (RescaleIntercept -1024).
UNSIGNED_STORAGE_OFFSET = 1024.0
#: What padding becomes: the floor of 12-bit CT storage, i.e. air.
PADDING_FILL_HU = -1024.0
#: Nothing physical lies below this; a value this low filling a region is padding.
_PADDING_CEILING_HU = -1100.0
_PADDING_MIN_FRACTION = 0.005
#: Enough voxels that a peak is real and not noise in a few voxels.
_MIN_FRACTION = 0.001
_MAX_SAMPLES = 4_000_000


class NotHounsfieldError(ValueError):
    """Values that are not HU and cannot be made HU without guessing."""


@dataclass(frozen=True)
class HounsfieldCheck:
    """The verdict on a volume's values: the offset that makes them HU, and why."""

    offset: float
    reason: str

    def to_metadata(self) -> dict[str, Any]:
        return {'HounsfieldCheck': self.reason, 'HounsfieldOffsetApplied': self.offset}


def check_hounsfield(values: np.ndarray, *, name: str) -> HounsfieldCheck:
    """Decide whether ``values`` (padding excluded) are HU, HU + 1024, or neither.

    HU: some air at -1000 and almost nothing below it. HU + 1024 (unsigned storage without
    its rescale): nothing negative, air at +24 and soft tissue at ~1064. Anything else is
    refused with :class:`NotHounsfieldError` naming ``name``, since guessing a scale would
    silently corrupt every downstream HU threshold.
    """
    sample = _sample(values)
    if sample.size == 0:
        raise NotHounsfieldError(f'{name}: no voxels besides padding; not a CT volume')
    air = _fraction_within(sample, AIR_RANGE_HU)
    below_air = np.count_nonzero(sample < AIR_RANGE_HU[0]) / sample.size
    if air >= _MIN_FRACTION and below_air < 0.01:
        return HounsfieldCheck(0.0, f'values are HU: {air:.1%} of voxels are air (-1000)')

    low, high = float(sample.min()), float(sample.max())
    shifted_air = _fraction_within(sample - UNSIGNED_STORAGE_OFFSET, AIR_RANGE_HU)
    shifted_tissue = _fraction_within(sample - UNSIGNED_STORAGE_OFFSET, SOFT_TISSUE_RANGE_HU)
    if low >= 0 and shifted_air >= _MIN_FRACTION and shifted_tissue >= 0.01:
        return HounsfieldCheck(
            -UNSIGNED_STORAGE_OFFSET,
            'values were HU + 1024 (unsigned storage without its rescale: air at +24, range '
            f'{low:g}..{high:g}); 1024 subtracted',
        )
    p01, p50, p99 = np.percentile(sample, [1, 50, 99])
    raise NotHounsfieldError(
        f'{name}: values are not Hounsfield units (range {low:g}..{high:g}, 1st/50th/99th '
        f'percentile {p01:.4g}/{p50:.4g}/{p99:.4g}): a CT in HU has air at -1000, and '
        'these values are neither HU nor HU + 1024; is this a CT?'
    )


def detect_padding_value(data: np.ndarray, declared: float | None = None) -> float | None:
    """The padding value of a CT in HU: the declared one, or a very low value filling a region.

    A declared value (DICOM PixelPaddingValue, converted to HU) counts when it lies below
    the physical range and occurs in ``data``.
    """
    if declared is not None:
        if declared <= PADDING_FILL_HU and np.any(data == declared):
            return float(declared)
        return None
    lowest = float(data.min())
    if lowest > _PADDING_CEILING_HU:
        return None
    if np.count_nonzero(data == lowest) < _PADDING_MIN_FRACTION * data.size:
        return None
    return lowest


def conform_ct(
    img: nb.Nifti1Image, *, name: str, declared_padding: float | None = None
) -> tuple[nb.Nifti1Image, dict[str, Any]]:
    """A CT as int16 HU in RAS+ voxel order, with padding set to air; and what was changed.

    The values are checked (and an HU + 1024 offset removed) by :func:`check_hounsfield`;
    voxels equal to the padding value become -1024 HU, so that no later step reads them as
    tissue or interpolates them into the body's edge.
    """
    data = img.get_fdata(dtype=np.float32)
    padding_value = detect_padding_value(data, declared_padding)
    padding = data == padding_value if padding_value is not None else np.zeros(data.shape, bool)
    check = check_hounsfield(data[~padding], name=name)
    data += check.offset
    data[padding] = PADDING_FILL_HU
    hu = to_int16(data, name=name)

    conformed = nb.Nifti1Image(hu, img.affine, img.header)
    conformed.set_data_dtype(np.int16)
    conformed.header.set_slope_inter(1, 0)
    reoriented, reorientation = reorient_to_ras(conformed)
    metadata: dict[str, Any] = {'Units': 'HU', **check.to_metadata()}
    if padding_value is not None:
        metadata.update(
            PaddingValue=padding_value,
            PaddingVoxels=int(np.count_nonzero(padding)),
            PaddingSetTo=PADDING_FILL_HU,
        )
    metadata['ValuesRounded'] = bool(np.any(hu != data))
    metadata.update(reorientation.to_metadata())
    return reoriented, metadata


def to_int16(data: np.ndarray, *, name: str) -> np.ndarray:
    """Round HU to int16, refusing values that int16 cannot hold."""
    rounded = np.rint(data)
    info = np.iinfo(np.int16)
    if rounded.min() < info.min or rounded.max() > info.max:
        raise NotHounsfieldError(
            f'{name}: values {rounded.min():g}..{rounded.max():g} do not fit int16 HU'
        )
    return rounded.astype(np.int16)


def _sample(values: np.ndarray) -> np.ndarray:
    """Every n-th voxel: the statistics above need millions of voxels, not all of them."""
    flat = np.ravel(values)
    step = max(1, flat.size // _MAX_SAMPLES)
    return np.asarray(flat[::step], dtype=np.float32)


def _fraction_within(values: np.ndarray, bounds: tuple[float, float]) -> float:
    return np.count_nonzero((values >= bounds[0]) & (values <= bounds[1])) / values.size
