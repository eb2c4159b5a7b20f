"""CT ingest: NRRD and NIfTI readers, HU checks, ``mrctprep import`` and the ct-ingest pipeline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel.orientations import aff2axcodes, io_orientation

from conftest import SHARED_DATA, run_cli, write_bids
from mrctprep.core.errors import InputError
from mrctprep.imaging.dicom import LPS_FROM_RAS
from mrctprep.imaging.hounsfield import NotHounsfieldError, check_hounsfield, conform_ct
from mrctprep.imaging.io import ImageReadError
from mrctprep.imaging.nrrd import load_nrrd
from mrctprep.importing.ct import plan_import

MR = SHARED_DATA / 'mr'
CT = SHARED_DATA / 'ct'
DICOM = SHARED_DATA / 'dicom'


def in_ras(img: nb.Nifti1Image) -> nb.Nifti1Image:
    return img.as_reoriented(io_orientation(img.affine))


def copy_files(source: Path, target: Path) -> Path:
    """Copy a folder's files (not their read-only modes)."""
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        shutil.copyfile(path, target / path.name)
    return target


def save_nifti(data: np.ndarray, like: nb.Nifti1Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(data, like.affine).to_filename(path)
    return path


def with_reconstruction_circle(data: np.ndarray, padding: int) -> np.ndarray:
    """``data`` with ``padding`` outside a circle in every axial slice, as scanners write."""
    x, y = np.ogrid[: data.shape[0], : data.shape[1]]
    outside = (x - data.shape[0] / 2) ** 2 + (y - data.shape[1] / 2) ** 2 > 50**2
    padded = data.copy()
    padded[outside] = padding
    return padded


# NRRD and NIfTI readers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ('nrrd_file', 'nifti_twin'),
    [
        ('stroke_flair_brain.nrrd', 'stroke_flair_brain.nii.gz'),  # oblique, attached, LPS
        ('seg3d_brain_mask.nrrd', 'seg3d_brain_mask.nii.gz'),  # x and y flipped on disk
        ('nrrd_detached_epi/nrrd.nhdr', None),  # detached header, RAS space
    ],
)
def test_nrrd_loads_to_the_array_and_world_of_its_twins(nrrd_file, nifti_twin):
    ours = load_nrrd(MR / nrrd_file)
    itk = sitk.ReadImage(str(MR / nrrd_file))
    itk_lps = np.eye(4)
    itk_lps[:3, :3] = np.reshape(itk.GetDirection(), (3, 3)) * np.asarray(itk.GetSpacing())
    itk_lps[:3, 3] = itk.GetOrigin()
    np.testing.assert_array_equal(
        np.asanyarray(ours.dataobj), sitk.GetArrayFromImage(itk).transpose(2, 1, 0)
    )
    np.testing.assert_allclose(ours.affine, LPS_FROM_RAS @ itk_lps, atol=1e-4)
    if nifti_twin:
        twin, ours_ras = in_ras(nb.load(MR / nifti_twin)), in_ras(ours)
        np.testing.assert_array_equal(np.asanyarray(ours_ras.dataobj), np.asanyarray(twin.dataobj))
        np.testing.assert_allclose(ours_ras.affine, twin.affine, atol=1e-4)


def test_detached_nrrd_without_its_data_file_is_one_clear_error(tmp_path):
    header = tmp_path / 'epi.nhdr'
    shutil.copyfile(MR / 'nrrd_detached_epi' / 'nrrd.nhdr', header)
    with pytest.raises(ImageReadError, match=r'epi\.nhdr: its detached data file nrrd\.raw\.gz'):
        load_nrrd(header)


# Hounsfield units --------------------------------------------------------------------------


def test_hounsfield_check_accepts_hu_fixes_plus_1024_and_refuses_mr():
    hu = np.asanyarray(nb.load(CT / 'totalseg_pulmonary_ct_cropped.nii.gz').dataobj)
    assert check_hounsfield(hu, name='chest').offset == 0
    stored = np.clip(hu, -1024, None).astype(np.float32) + 1024  # 12-bit storage, no rescale
    fixed = check_hounsfield(stored, name='chest')
    assert fixed.offset == -1024 and 'HU + 1024' in fixed.reason
    t1 = nb.load(MR / 't1_head_2mm.nii.gz').get_fdata()
    with pytest.raises(NotHounsfieldError, match=r'^t1\.nii: values are not Hounsfield units'):
        check_hounsfield(t1, name='t1.nii')


def test_conform_ct_sets_padding_to_air_and_reorients():
    original = nb.load(CT / 'totalseg_pulmonary_ct_cropped.nii.gz')  # LPS on disk
    padded = with_reconstruction_circle(np.asanyarray(original.dataobj), -3024)
    conformed, metadata = conform_ct(
        nb.Nifti1Image(padded, original.affine), name='chest', declared_padding=None
    )
    data = np.asanyarray(conformed.dataobj)
    assert aff2axcodes(conformed.affine) == ('R', 'A', 'S')
    assert conformed.get_data_dtype() == np.int16 and data.min() >= -1100
    assert metadata['PaddingValue'] == -3024
    assert metadata['PaddingVoxels'] == np.count_nonzero(padded == -3024)
    assert metadata['OriginalOrientation'] == 'LPS' and metadata['Units'] == 'HU'
    assert metadata['HounsfieldOffsetApplied'] == 0


# mrctprep import -------------------------------------------------------------------------


@pytest.fixture(scope='module')
def case_folders(demo_bids, tmp_path_factory) -> Path:
    """Cases in the usual layouts, from the shared data and the demo's sourcedata.

    case_1 GE gantry-tilted DICOM; case_2 JPEG 2000 DICOM without UIDs; case_3 the demo's
    sub-01 as DICOM and NRRD; case_4 the demo's sub-02 NRRD; case_5 a NIfTI stored as
    HU + 1024; case_6 a NIfTI with -3024 padding outside the reconstruction circle.
    """
    root = tmp_path_factory.mktemp('cases') / 'source'
    demo = demo_bids / 'sourcedata'
    copy_files(DICOM / 'ct_head_ge_gantry_tilt', root / 'Dicom_Data' / 'case_1')
    copy_files(DICOM / 'ct_abdomen_totalseg_j2k', root / 'Dicom_Data' / 'case_2')
    copy_files(demo / 'sub-01' / 'dicom', root / 'Dicom_Data' / 'case_3')
    (root / 'Nrrd_Data').mkdir()
    shutil.copyfile(
        demo / 'sub-01' / 'nrrd' / 'sub-01_ct.nrrd', root / 'Nrrd_Data' / 'case_3.nrrd'
    )
    shutil.copyfile(
        demo / 'sub-02' / 'nrrd' / 'sub-02_ct.nrrd', root / 'Nrrd_Data' / 'case_4.nrrd'
    )
    small = nb.load(CT / 'totalseg_example_ct_sm.nii.gz')
    stored = (np.clip(np.asanyarray(small.dataobj), -1024, None) + 1024).astype(np.uint16)
    save_nifti(stored, small, root / 'Nifti_Data' / 'case_5.nii.gz')
    padded = with_reconstruction_circle(np.asanyarray(small.dataobj), -3024)
    save_nifti(padded, small, root / 'Nifti_Data' / 'case_6.nii.gz')
    return root


@pytest.fixture(scope='module')
def imported(case_folders, tmp_path_factory) -> Path:
    bids = tmp_path_factory.mktemp('imported') / 'bids'
    result = run_cli('import', case_folders, bids)
    assert result.returncode == 0, result.stderr
    assert 'gantry tilt of 18.5 degrees' in result.stderr
    assert 'values were HU + 1024' in result.stderr
    return bids


def sidecar(bids: Path, subject: str) -> dict:
    return json.loads((bids / subject / 'anat' / f'{subject}_ct.json').read_text())


def test_import_writes_a_bids_dataset_of_int16_hu_images(imported, demo_bids):
    subjects = [f'sub-case{n}' for n in range(1, 7)]
    rows = (imported / 'participants.tsv').read_text().splitlines()
    assert rows == ['participant_id', *subjects]
    assert json.loads((imported / 'dataset_description.json').read_text())['Name'] == 'bids'
    assert '*_ct.*' in (imported / '.bidsignore').read_text().splitlines()
    for subject in subjects:
        img = nb.load(imported / subject / 'anat' / f'{subject}_ct.nii.gz')
        assert img.get_data_dtype() == np.int16
    assert not list(imported.parent.glob('.mrctprep-import-*'))
    assert not list(imported.glob('.mrctprep-import-*'))

    # The demo's DICOM and NRRD copies convert to its NIfTI CT, voxel for voxel.
    for case, demo_subject in (('sub-case3', 'sub-01'), ('sub-case4', 'sub-02')):
        ours = in_ras(nb.load(imported / case / 'anat' / f'{case}_ct.nii.gz'))
        truth = in_ras(nb.load(demo_bids / demo_subject / 'anat' / f'{demo_subject}_ct.nii.gz'))
        np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(truth.dataobj))
        assert np.abs(ours.affine - truth.affine).max() < 0.01
    assert sidecar(imported, 'sub-case3')['Conversion']['SourceFormat'] == 'DICOM'
    assert sidecar(imported, 'sub-case4')['Conversion']['SourceFormat'] == 'NRRD'

    # HU + 1024 was shifted back, and said so.
    fixed = np.asanyarray(nb.load(imported / 'sub-case5' / 'anat' / 'sub-case5_ct.nii.gz').dataobj)
    original = np.asanyarray(nb.load(CT / 'totalseg_example_ct_sm.nii.gz').dataobj)
    np.testing.assert_array_equal(fixed, np.clip(original, -1024, None))
    assert sidecar(imported, 'sub-case5')['Conversion']['HounsfieldOffsetApplied'] == -1024
    assert sidecar(imported, 'sub-case6')['PixelPaddingValue'] == -3024


def test_import_sidecars_carry_acquisition_facts_and_provenance_but_no_phi(imported):
    tilted = sidecar(imported, 'sub-case1')
    assert tilted['Manufacturer'] == 'GE MEDICAL SYSTEMS'
    assert tilted['ManufacturerModelName'] == 'HiSpeed Dual'
    assert tilted['ConvolutionKernel'] == 'STD+' and tilted['KVP'] == 120
    assert tilted['ExposureTime'] == 2.0 and tilted['ReconstructionDiameter'] == 250
    assert tilted['SpacingBetweenSlices'] == pytest.approx(4.0019, abs=1e-4)
    conversion = tilted['Conversion']
    assert conversion['GantryTiltCorrected'] and conversion['SliceSpacingResampled']
    assert tilted['ConversionSoftware'] == 'mrctprep'
    assert len(conversion['SourceFiles']) == 28
    assert conversion['SourceFiles'][0] == 'bids::sourcedata/sub-case1/sub-case1_ct/01.dcm'
    copies = sorted((imported / 'sourcedata' / 'sub-case1' / 'sub-case1_ct').iterdir())
    assert [p.name for p in copies] == [f'{n:02d}.dcm' for n in range(1, 29)]
    contrast = sidecar(imported, 'sub-case2')
    assert contrast['ContrastBolusAgent'] == 'APPLIED' and 'CTDIvol' in contrast

    for path in imported.glob('sub-*/anat/*.json'):
        keys = _all_keys(json.loads(path.read_text()))
        assert not [key for key in keys if 'Patient' in key or 'BirthDate' in key]
        assert 'QMNx85rKkkg' not in path.read_text()  # the GE series' PatientID


def _all_keys(content) -> set[str]:
    if isinstance(content, dict):
        return set(content).union(*(_all_keys(v) for v in content.values()))
    if isinstance(content, list):
        return set().union(*(_all_keys(v) for v in content))
    return set()


def test_a_source_without_images_is_refused(tmp_path):
    (tmp_path / 'case_1').mkdir()
    (tmp_path / 'case_1' / 'notes.txt').write_text('no images here')
    with pytest.raises(InputError, match='no DICOM or NRRD or NIfTI CT images found'):
        plan_import(tmp_path)


def test_import_format_option_and_existing_subjects(case_folders, imported, tmp_path):
    nrrd_only = plan_import(case_folders, 'nrrd')
    assert [(p.subject, p.source.format) for p in nrrd_only] == [
        ('case3', 'nrrd'),
        ('case4', 'nrrd'),
    ]
    auto = {p.subject: p.source.format for p in plan_import(case_folders)}
    assert auto['case3'] == 'dcm'

    # A subject that already has a CT is refused, and nothing changes...
    before = (imported / 'sub-case3' / 'anat' / 'sub-case3_ct.nii.gz').read_bytes()
    result = run_cli('import', case_folders, imported, '--format', 'nrrd')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith('mrctprep: error: ')
    assert 'pass --overwrite' in result.stderr
    assert (imported / 'sub-case3' / 'anat' / 'sub-case3_ct.nii.gz').read_bytes() == before

    # ... and a new case extends the dataset.
    extra = tmp_path / 'more'
    extra.mkdir()
    shutil.copyfile(CT / 'totalseg_example_ct_sm.nii.gz', extra / 'case_9.nii.gz')
    copy = tmp_path / 'bids'
    shutil.copytree(imported, copy)
    assert run_cli('import', extra, copy).returncode == 0
    assert (copy / 'participants.tsv').read_text().splitlines()[-1] == 'sub-case9'
    assert run_cli('import', case_folders, copy, '--format', 'nrrd', '--overwrite').returncode == 0
    assert sidecar(copy, 'sub-case3')['Conversion']['SourceFormat'] == 'NRRD'
    assert not (copy / 'sourcedata' / 'sub-case3' / 'sub-case3_ct' / 'IM0001.dcm').exists()
    assert (copy / 'sourcedata' / 'sub-case3' / 'sub-case3_ct' / 'case_3.nrrd').exists()


def _truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _bad_cases(root: Path, demo: Path, kind: str) -> Path:
    """A source folder with one bad case of ``kind``."""
    series = demo / 'sourcedata' / 'sub-01' / 'dicom'
    case = root / 'Dicom_Data' / 'case_1'
    if kind == 'truncated-dicom':
        _truncate(copy_files(series, case) / 'IM0010.dcm')
    elif kind == 'not-ct':
        case.mkdir(parents=True)
        for path in sorted(series.iterdir()):
            dataset = pydicom.dcmread(path)
            dataset.Modality = 'MR'
            dataset.save_as(case / path.name)
    elif kind == 'one-slice':
        case.mkdir(parents=True)
        shutil.copyfile(series / 'IM0001.dcm', case / 'IM0001.dcm')
    elif kind == 'mixed-series':
        copy_files(series, case)
        for path in sorted((demo / 'sourcedata' / 'sub-02' / 'dicom').iterdir()):
            shutil.copyfile(path, case / f'other_{path.name}')
    elif kind == 'nrrd-without-data':
        (root / 'Nrrd_Data').mkdir(parents=True)
        shutil.copyfile(MR / 'nrrd_detached_epi' / 'nrrd.nhdr', root / 'Nrrd_Data' / 'case_1.nhdr')
    elif kind == 'nifti-not-hu':
        (root / 'Nifti_Data').mkdir(parents=True)
        shutil.copyfile(MR / 't1_head_2mm.nii.gz', root / 'Nifti_Data' / 'case_1.nii.gz')
    # A good case beside the bad one: it must not be imported either.
    (root / 'Nifti_Data').mkdir(exist_ok=True)
    shutil.copyfile(CT / 'totalseg_example_ct_sm.nii.gz', root / 'Nifti_Data' / 'case_2.nii.gz')
    return root


@pytest.mark.parametrize(
    ('kind', 'message'),
    [
        ('truncated-dicom', r'skipping unreadable file\(s\) IM0010\.dcm .* leaves a gap'),
        ('not-ct', r'case_1: no CT volume to import \(series 1 .*: modality MR, not CT\)'),
        ('one-slice', r'case_1: no CT volume to import \(.*a single slice, not a volume\)'),
        ('mixed-series', r'case_1: 2 CT series mixed in one folder'),
        ('nrrd-without-data', r'case_1\.nhdr: its detached data file nrrd\.raw\.gz is missing'),
        ('nifti-not-hu', r'case_1\.nii\.gz: values are not Hounsfield units'),
    ],
)
def test_bad_input_is_one_clear_line_and_nothing_is_written(demo_bids, tmp_path, kind, message):
    source = _bad_cases(tmp_path / 'source', demo_bids, kind)
    bids = tmp_path / 'bids'
    result = run_cli('import', source, bids)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if 'error' in line.lower()]
    assert len(errors) == 1 and errors[0].startswith('mrctprep: error: '), result.stderr
    assert re.search(message, errors[0]), errors[0]
    assert 'Traceback' not in result.stderr
    assert not bids.exists()
    assert not list(tmp_path.glob('.mrctprep-import-*'))


def test_a_truncated_last_slice_is_skipped_with_a_warning(demo_bids, tmp_path):
    case = copy_files(demo_bids / 'sourcedata' / 'sub-01' / 'dicom', tmp_path / 'src' / 'case_1')
    _truncate(case / 'IM0034.dcm')
    result = run_cli('import', tmp_path / 'src', tmp_path / 'bids')
    assert result.returncode == 0, result.stderr
    assert 'skipped IM0034.dcm: pixel data not decodable' in result.stderr
    img = nb.load(tmp_path / 'bids' / 'sub-case1' / 'anat' / 'sub-case1_ct.nii.gz')
    assert img.shape[2] == 33
    skipped = sidecar(tmp_path / 'bids', 'sub-case1')['Conversion']['SkippedFiles']
    assert skipped[0].startswith('IM0034.dcm: pixel data not decodable')


# The ct-ingest pipeline ----------------------------------------------------------------------


def test_ct_ingest_pipeline_conforms_every_imported_ct(imported, tmp_path):
    out = tmp_path / 'out'
    result = run_cli(
        imported, out, 'participant', '--pipelines', 'ct-ingest', '-w', tmp_path / 'work'
    )
    assert result.returncode == 0, result.stderr
    for n in range(1, 7):
        subject = f'sub-case{n}'
        img = nb.load(out / subject / 'anat' / f'{subject}_desc-preproc_ct.nii.gz')
        data = np.asanyarray(img.dataobj)
        assert img.get_data_dtype() == np.int16
        assert aff2axcodes(img.affine) == ('R', 'A', 'S')
        assert np.median(data[data < -500]) < -900  # air
        assert data.min() >= -1100  # no padding left
        meta = json.loads((out / subject / 'anat' / f'{subject}_desc-preproc_ct.json').read_text())
        assert meta['Units'] == 'HU'
        assert meta['Sources'] == [f'bids:raw:{subject}/anat/{subject}_ct.nii.gz']
        figure = out / subject / 'figures' / f'{subject}_desc-preproc_ct.svg'
        svg = figure.read_text()
        assert svg.lstrip().startswith('<?xml') and 'bone 400/1800' in svg  # every region's
        assert re.search(r'RAS\+ \((head|chest|body)\)', svg)  # the windows' body region
    tilted = json.loads(
        (out / 'sub-case1' / 'anat' / 'sub-case1_desc-preproc_ct.json').read_text()
    )
    assert tilted['Manufacturer'] == 'GE MEDICAL SYSTEMS' and tilted['KVP'] == 120
    padded = json.loads(
        (out / 'sub-case6' / 'anat' / 'sub-case6_desc-preproc_ct.json').read_text()
    )
    assert padded['PaddingValue'] == -3024 and padded['PaddingSetTo'] == -1024
    assert padded['PaddingVoxels'] > 0
    descriptions = (out / 'descriptions.tsv').read_text()
    assert 'preproc\t' in descriptions


def test_ct_ingest_refuses_a_ct_that_is_not_in_hu(tmp_path):
    bids = write_bids(
        tmp_path / 'bids', {'sub-01/anat/sub-01_ct.nii.gz': MR / 't1_head_2mm.nii.gz'}, ['01']
    )
    result = run_cli(
        bids, tmp_path / 'out', 'participant', '--pipelines', 'ct-ingest', '-w', tmp_path / 'work'
    )
    assert result.returncode == 1
    assert 'sub-01_ct.nii.gz: values are not Hounsfield units' in result.stderr
    assert not list((tmp_path / 'out').glob('sub-01/anat/*'))
