"""Write CT volumes as DICOM series (CT Image Storage, one file per slice)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

#: DICOM patient coordinates (LPS) from NIfTI world coordinates (RAS), and back.
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Stored values are unsigned 12-bit; the intercept maps them to -1024..3071 HU.
_RESCALE_INTERCEPT = -1024
_MAX_STORED = 4095


def _ds(value: float) -> str:
    # DS strings are limited to 16 characters; this keeps as many digits as fit.
    return format_number_as_ds(float(value))


def _element_value(keyword: str, value: Any) -> Any:
    vr = dictionary_VR(keyword)
    if vr == 'DS':
        return _ds(value)
    if vr == 'IS':
        return round(value)
    if vr in ('FD', 'FL'):
        return float(value)
    return value


def write_ct_dicom_series(
    img: nib.Nifti1Image,
    out_dir: Path,
    *,
    meta: Mapping[str, object],
    series_description: str,
    patient_id: str,
    uid_seed: str,
) -> list[Path]:
    """Write a CT image in HU as an axial DICOM series; return the files in slice order.

    The volume is stored in LPS voxel order (columns to the patient's left, rows to posterior,
    slices to superior), so readers see the usual axial stack; its geometry (position,
    orientation, spacing) is that of ``img.affine`` converted from RAS to LPS. ``meta`` adds
    DICOM attributes by keyword (e.g. Manufacturer, ConvolutionKernel, KVP, CTDIvol).
    Every UID derives from ``uid_seed``, so the same seed writes the same series.
    """
    volume = _StoredVolume.from_image(img)

    def uid(*parts: str) -> str:
        return generate_uid(entropy_srcs=[uid_seed, *parts])

    series = Dataset()
    _set_identity(series, patient_id, series_description, uid)
    _set_image_description(series, volume)
    for keyword, value in meta.items():
        setattr(series, keyword, _element_value(keyword, value))

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(volume.stored.shape[2]):
        path = out_dir / f'IM{k + 1:04d}.dcm'
        _slice_dataset(series, volume, k, uid('image', str(k))).save_as(
            path, enforce_file_format=True
        )
        paths.append(path)
    return paths


@dataclass(frozen=True)
class _StoredVolume:
    """A CT as DICOM stores it: unsigned values in LPS voxel order, and that order's geometry."""

    #: (column, row, slice) stored values: HU minus the rescale intercept.
    stored: np.ndarray
    lps_affine: np.ndarray
    spacing: np.ndarray
    #: Unit voxel axes (columns) in LPS.
    directions: np.ndarray

    @classmethod
    def from_image(cls, img: nib.Nifti1Image) -> _StoredVolume:
        ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(('L', 'P', 'S')))
        lps_img = img.as_reoriented(ornt)
        lps_affine = LPS_FROM_RAS @ lps_img.affine
        spacing = nib.affines.voxel_sizes(lps_affine)
        directions = lps_affine[:3, :3] / spacing
        if not np.allclose(directions.T @ directions, np.eye(3), atol=1e-6):
            raise ValueError('DICOM slices need orthogonal voxel axes; this affine is sheared')
        stored = np.rint(np.asarray(lps_img.dataobj, dtype=np.float64)) - _RESCALE_INTERCEPT
        if stored.min() < 0 or stored.max() > _MAX_STORED:
            lowest, highest = stored.min() + _RESCALE_INTERCEPT, stored.max() + _RESCALE_INTERCEPT
            raise ValueError(
                f'CT values must lie within [-1024, 3071] HU, not {lowest}..{highest}'
            )
        return cls(stored.astype('<u2'), lps_affine, spacing, directions)


def _set_identity(
    series: Dataset, patient_id: str, series_description: str, uid: Callable[[str], str]
) -> None:
    """What the series is and whose: SOP class, pseudonymous patient, study, series, frame."""
    series.SpecificCharacterSet = 'ISO_IR 100'
    series.ImageType = ['ORIGINAL', 'PRIMARY', 'AXIAL']
    series.SOPClassUID = CTImageStorage
    series.Modality = 'CT'
    # A pseudonym only: the subject label is both name and ID.
    series.PatientName = patient_id
    series.PatientID = patient_id
    series.PatientBirthDate = ''
    series.PatientSex = ''
    series.StudyInstanceUID = uid('study')
    series.SeriesInstanceUID = uid('series')
    series.FrameOfReferenceUID = uid('frame-of-reference')
    series.StudyID = '1'
    series.SeriesNumber = 1
    series.AcquisitionNumber = 1
    series.AccessionNumber = ''
    series.ReferringPhysicianName = ''
    series.StudyDate = ''
    series.StudyTime = ''
    series.SeriesDescription = series_description
    series.BodyPartExamined = 'HEAD'
    series.PatientPosition = 'HFS'
    series.PositionReferenceIndicator = ''


def _set_image_description(series: Dataset, volume: _StoredVolume) -> None:
    """The slices' shared geometry and how their pixels are stored and become HU."""
    spacing = volume.spacing
    series.ImageOrientationPatient = [_ds(v) for v in volume.directions[:, :2].T.ravel()]
    # PixelSpacing is (between rows, between columns); columns run along voxel axis 0.
    series.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    series.SliceThickness = _ds(spacing[2])
    series.SpacingBetweenSlices = _ds(spacing[2])
    series.SamplesPerPixel = 1
    series.PhotometricInterpretation = 'MONOCHROME2'
    series.Rows, series.Columns = int(volume.stored.shape[1]), int(volume.stored.shape[0])
    series.BitsAllocated = 16
    series.BitsStored = 12
    series.HighBit = 11
    series.PixelRepresentation = 0
    series.RescaleIntercept = _ds(_RESCALE_INTERCEPT)
    series.RescaleSlope = _ds(1)
    series.RescaleType = 'HU'
    series.WindowCenter = _ds(40)
    series.WindowWidth = _ds(80)


def _slice_dataset(series: Dataset, volume: _StoredVolume, k: int, instance_uid: str) -> Dataset:
    """Slice ``k`` of ``volume`` as a DICOM file's dataset, sharing ``series``' attributes."""
    position = volume.lps_affine[:3, :3] @ [0, 0, k] + volume.lps_affine[:3, 3]
    ds = Dataset()
    ds.update(series)
    ds.SOPInstanceUID = instance_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(position @ volume.directions[:, 2])
    # Rows x columns, with columns along voxel axis 0.
    ds.PixelData = np.ascontiguousarray(volume.stored[:, :, k].T).tobytes()
    ds['PixelData'].VR = 'OW'
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds
