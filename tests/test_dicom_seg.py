"""Organ labels as a DICOM SEG over the CT series they were made from, read back with highdicom."""

from __future__ import annotations

import json
import shutil

import highdicom
import nibabel as nb
import numpy as np
import pydicom
import pytest

from conftest import SHARED_DATA, run_cli
from mrctprep.core.bids import dicom_source_files
from mrctprep.core.config import ExecutionOptions, ModelOptions
from mrctprep.imaging.dicom import write_ct_dicom_series
from mrctprep.imaging.dicom_seg import read_source_series, unreferable
from mrctprep.imaging.organs import FLARE_ORGANS
from mrctprep.interfaces.bids import DerivativesDataSink
from mrctprep.interfaces.organs import DicomSegmentation
from mrctprep.models.weights import save_weights
from mrctprep.workflows.organ_seg import init_organ_seg_wf

NAMES = {label: name for label, name, _, _ in FLARE_ORGANS}


def hu_labels(hu: np.ndarray) -> np.ndarray:
    """Stand-in organ labels that each DICOM image can recompute from its own pixels."""
    labels = np.zeros(hu.shape, np.uint8)
    labels[(hu > 0) & (hu <= 100)] = 1
    labels[hu > 300] = 3
    return labels


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
    """The 3 mm abdomen CT written as a DICOM series (UIDs and all) and imported with
    ``mrctprep import``; the source image, and the imported CT."""
    root = tmp_path_factory.mktemp('dicom_seg')
    ct = nb.load(SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz')
    hu = np.clip(np.asanyarray(ct.dataobj), -1024, 3071).astype(np.int16)
    source = nb.Nifti1Image(hu, ct.affine)
    write_ct_dicom_series(
        source, root / 'src' / 'case1', meta={}, series_description='abdomen',
        patient_id='Case^One', uid_seed='dicom-seg-test',
    )  # fmt: skip
    result = run_cli('import', root / 'src', root / 'bids')
    assert result.returncode == 0, result.stderr
    return source, next((root / 'bids').glob('sub-*/anat/sub-*_ct.nii.gz'))


def test_each_frame_holds_the_labels_of_its_own_source_image(imported, tmp_path):
    """The labels, made on the NIfTI grid, land on the pixels of the DICOM image that holds
    the same voxels: recomputed from each image's own HU, they agree everywhere."""
    source, ct = imported
    files = dicom_source_files(ct)
    assert len(files) == source.shape[2] and all(f.parts[-4] == 'sourcedata' for f in files)
    headers = read_source_series(files)
    labels = nb.Nifti1Image(hu_labels(np.asanyarray(source.dataobj)), source.affine)
    labels.to_filename(tmp_path / 'labels.nii.gz')
    made = DicomSegmentation(
        dseg_file=str(tmp_path / 'labels.nii.gz'), source_files=[str(f) for f in files]
    ).run(cwd=tmp_path)
    sink = DerivativesDataSink(
        base_directory=str(tmp_path / 'out'), source_file=[str(ct)],
        in_file=made.outputs.out_file, entities={'segmentation': 'organs'}, suffix='dseg',
    ).run(cwd=tmp_path)  # fmt: skip
    written = tmp_path / 'out' / ct.parent.parent.name / 'anat'
    assert sink.outputs.out_file == str(written / f'{ct.parent.parent.name}_seg-organs_dseg.dcm')
    assert list(written.glob('*.json')) == []  # the label map's sidecar name stays its own

    seg = highdicom.seg.segread(sink.outputs.out_file)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(NAMES.values())
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == [
        '10200004', '64033007', '78961009', '15776009'
    ]  # fmt: skip
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    uids = [h.SOPInstanceUID for h in headers]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    for frame, path in zip(frames, files, strict=True):
        image = pydicom.dcmread(path)
        hu = image.pixel_array * float(image.RescaleSlope) + float(image.RescaleIntercept)
        np.testing.assert_array_equal(frame, hu_labels(hu), err_msg=path.name)
    assert {1, 3} <= set(np.unique(frames))


def test_an_anonymised_series_cannot_be_referenced_and_says_why(imported, tmp_path):
    _, ct = imported
    files = dicom_source_files(ct)
    assert unreferable(files) is None
    blanked = pydicom.dcmread(files[0])
    blanked.SOPInstanceUID = ''
    blanked.save_as(tmp_path / 'blanked.dcm')
    reason = unreferable([tmp_path / 'blanked.dcm'])
    assert reason == f'{tmp_path / "blanked.dcm"} has no SOPInstanceUID'


def test_a_ct_that_did_not_come_from_dicom_has_no_source_series(imported, tmp_path):
    _, ct = imported
    sidecar = json.loads(ct.with_name(ct.name.replace('.nii.gz', '.json')).read_text())
    assert sidecar['Conversion']['SourceFormat'] == 'DICOM'
    plain = tmp_path / 'sub-01' / 'anat' / 'sub-01_ct.nii.gz'
    plain.parent.mkdir(parents=True)
    nb.save(nb.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), plain)
    assert dicom_source_files(plain) == []


def test_organ_seg_writes_a_dicom_seg_only_for_a_referable_dicom_source(
    imported, tmp_path, caplog
):
    """The graph gains the SEG and its sink for an imported DICOM CT; an anonymised series
    (UIDs blanked) gets a warning naming the file instead, and a NIfTI-born CT nothing."""
    _, ct = imported
    weights = {
        name: str(save_weights({}, tmp_path / f'{name}.pt', name=name, provenance={}).path)
        for name in ('efficientscn-localization', 'efficientscn-segmentation')
    }

    def node_names(source_file):
        workflow = init_organ_seg_wf(
            source_file=str(source_file), output_dir=tmp_path / 'out',
            models=ModelOptions(weights=weights),
            execution=ExecutionOptions(work_dir=tmp_path / 'work'),
        )  # fmt: skip
        return {node.fullname.split('.')[-1] for node in workflow._create_flat_graph()}

    assert {'dicom_seg', 'ds_organs_dicom_seg'} <= node_names(ct)
    anonymised = tmp_path / 'anonymised'
    shutil.copytree(ct.parents[2], anonymised)
    copy = anonymised / ct.relative_to(ct.parents[2])
    for path in dicom_source_files(copy):
        image = pydicom.dcmread(path)
        image.StudyInstanceUID = ''
        image.save_as(path)
    with caplog.at_level('WARNING'):
        assert 'dicom_seg' not in node_names(copy)
    assert f'no DICOM SEG for {copy}: ' in caplog.text and 'has no StudyInstanceUID' in caplog.text
    copy.with_name(copy.name.replace('.nii.gz', '.json')).write_text('{}')
    assert 'dicom_seg' not in node_names(copy)
