"""Organ label maps as DICOM Segmentation objects that reference the CT series they came from.

Radiology viewers and PACS show a DICOM SEG over its source series; a NIfTI label map they
cannot place. The labels are sampled at every pixel of every source image (nearest voxel, in
world coordinates), so the frames line up with the series whatever grid the label map has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nb
import numpy as np
import numpy.typing as npt
import pydicom
from nibabel.affines import apply_affine
from pydicom.sr.codedict import codes

from mrctprep.imaging.dicom import LPS_FROM_RAS

if TYPE_CHECKING:
    import highdicom

#: SNOMED CT codes of the FLARE organs, by the names of the label table.
ORGAN_CODES = {
    'liver': codes.SCT.Liver,
    'kidneys': codes.SCT.Kidney,
    'spleen': codes.SCT.Spleen,
    'pancreas': codes.SCT.Pancreas,
}
#: What a SEG needs of each source image to reference it.
REFERENCED_ATTRIBUTES = ('SOPClassUID', 'SOPInstanceUID', 'SeriesInstanceUID', 'StudyInstanceUID')
SEG_SERIES_NUMBER = 900


def read_source_series(files: Sequence[Path]) -> list[pydicom.Dataset]:
    """The series' images, headers only (their pixels are not needed)."""
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in files]


def unreferable(files: Sequence[Path]) -> str | None:
    """Why a SEG cannot reference this series, or None: an anonymiser blanked its UIDs, or
    it is an enhanced (multi-frame) CT, whose frames this writer does not address."""
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    blank = [name for name in REFERENCED_ATTRIBUTES if not header.get(name)]
    if blank:
        return f'{files[0]} has no {", ".join(blank)}'
    if int(header.get('NumberOfFrames', 1) or 1) > 1:
        return f'{files[0]} is a multi-frame image'
    return None


def labels_on_frames(
    labels: nb.Nifti1Image, sources: Sequence[pydicom.Dataset]
) -> npt.NDArray[np.uint8]:
    """``(frames, rows, columns)``: the label of the voxel nearest to each source pixel, 0
    outside the label map."""
    data = np.asanyarray(labels.dataobj).astype(np.uint8)
    to_voxels = np.linalg.inv(labels.affine)
    frames = []
    for source in sources:
        orientation = np.asarray(source.ImageOrientationPatient, float)
        row_spacing, column_spacing = (float(s) for s in source.PixelSpacing)
        rows, columns = np.mgrid[: int(source.Rows), : int(source.Columns)]
        # ImageOrientationPatient: the direction along a row (columns grow), then down a column
        lps = (
            np.asarray(source.ImagePositionPatient, float)
            + columns[..., None] * column_spacing * orientation[:3]
            + rows[..., None] * row_spacing * orientation[3:]
        )
        voxels = np.rint(apply_affine(to_voxels, lps @ LPS_FROM_RAS[:3, :3])).astype(int)
        inside = np.all((voxels >= 0) & (voxels < data.shape), axis=-1)
        frame = np.zeros(rows.shape, np.uint8)
        frame[inside] = data[tuple(voxels[inside].T)]
        frames.append(frame)
    return np.stack(frames)


def segmentation_of(
    labels: nb.Nifti1Image,
    sources: Sequence[pydicom.Dataset],
    names: Mapping[int, str],
    *,
    algorithm: str,
    version: str,
) -> highdicom.seg.Segmentation:
    """A binary DICOM SEG with one segment per label of ``names`` (numbered as the labels,
    which must run 1..n), an organ that was not found as an empty one."""
    import highdicom  # deferred: a second to import, which building a workflow should not pay

    frames = labels_on_frames(labels, sources)
    identification = highdicom.AlgorithmIdentificationSequence(
        name=algorithm, version=version, family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        highdicom.seg.SegmentDescription(
            segment_number=label,
            segment_label=name,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=ORGAN_CODES[name],
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        )
        for label, name in sorted(names.items())
    ]
    return highdicom.seg.Segmentation(
        source_images=list(sources),
        pixel_array=frames,
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=highdicom.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        manufacturer='mrctprep',
        manufacturer_model_name=algorithm,
        software_versions=version,
        device_serial_number='n/a',
        series_description=f'{algorithm} organs',
    )
