"""The demo dataset: BIDS layout, anatomy and geometry of its images, and its DICOM/NRRD twins."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from bids import BIDSLayout
from nibabel.orientations import axcodes2ornt, ornt_transform
from nibabel.processing import resample_from_to
from scipy import ndimage as ndi

from mrctprep.demo import dataset as demo
from mrctprep.imaging.dicom import LPS_FROM_RAS, write_ct_dicom_series
from mrctprep.imaging.io import load_mni152_template
from mrctprep.imaging.synthetic_head import head_pose, load_mni152_tissues

SUBJECTS = ('01', '02', '03', '04')
SITE_OF = {p.label: p.site for p in demo.PARTICIPANTS}
ANATOMY_OF = {p.label: p.anatomy for p in demo.PARTICIPANTS}


@pytest.fixture(scope='module')
def bids_dir(demo_bids: Path) -> Path:
    """The dataset that ``mrctprep demo DIR --seed 0`` wrote (conftest), read-only."""
    assert sorted(p.name for p in demo_bids.glob('sub-*')) == [f'sub-{s}' for s in SUBJECTS]
    return demo_bids


@pytest.fixture(scope='module')
def template() -> nib.Nifti1Image:
    return load_mni152_template('t1')


@pytest.fixture(scope='module')
def template_brain_centre(template: nib.Nifti1Image) -> np.ndarray:
    return nib.affines.apply_affine(template.affine, ndi.center_of_mass(template.get_fdata() > 0))


def _image(bids_dir: Path, label: str, suffix: str) -> nib.Nifti1Image:
    return nib.load(bids_dir / f'sub-{label}' / 'anat' / f'sub-{label}_{suffix}.nii.gz')


def _sidecar(bids_dir: Path, label: str, suffix: str) -> dict:
    path = bids_dir / f'sub-{label}' / 'anat' / f'sub-{label}_{suffix}.json'
    return json.loads(path.read_text())


def _on_grid(img: nib.Nifti1Image, reference: nib.Nifti1Image, order: int = 1) -> np.ndarray:
    """``img`` resampled onto ``reference``'s voxels through world coordinates."""
    return resample_from_to(img, reference, order=order).get_fdata(dtype=np.float32)


def _sitk_to_nifti(image: sitk.Image) -> nib.Nifti1Image:
    """A SimpleITK image (LPS geometry) as a NIfTI image (RAS affine), same voxels."""
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return nib.Nifti1Image(sitk.GetArrayFromImage(image).transpose(2, 1, 0), LPS_FROM_RAS @ lps)


def _assert_same_image(actual: nib.Nifti1Image, expected: nib.Nifti1Image) -> None:
    """Same values at the same world positions (within 1e-3 mm), whatever the voxel order."""
    actual, expected = nib.as_closest_canonical(actual), nib.as_closest_canonical(expected)
    np.testing.assert_array_equal(np.asanyarray(actual.dataobj), np.asanyarray(expected.dataobj))
    np.testing.assert_allclose(actual.affine, expected.affine, atol=1e-3)


def _head_depth_mm(img: nib.Nifti1Image, threshold: float) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Canonical image and each voxel's depth below the head surface (0 outside the head).

    The head is everything above ``threshold``, holes filled slice by slice (the skull is dark
    in T1w; axial slices are closed rings, even where the field of view cuts the neck).
    """
    canonical = nib.as_closest_canonical(img)
    foreground = canonical.get_fdata(dtype=np.float32) > threshold
    head = np.stack(
        [ndi.binary_fill_holes(foreground[:, :, k]) for k in range(foreground.shape[2])], axis=2
    )
    return canonical, ndi.distance_transform_edt(head, sampling=canonical.header.get_zooms())


def test_dataset_files(bids_dir: Path) -> None:
    for name in (
        'dataset_description.json',
        'README',
        '.bidsignore',
        'participants.tsv',
        'participants.json',
    ):
        assert (bids_dir / name).is_file(), name
    for label in SUBJECTS:
        subject = f'sub-{label}'
        for suffix in ('T1w.nii.gz', 'T1w.json', 'ct.nii.gz', 'ct.json'):
            assert (bids_dir / subject / 'anat' / f'{subject}_{suffix}').is_file(), suffix
        slices = _image(bids_dir, label, 'ct').shape[2]
        assert len(list((bids_dir / 'sourcedata' / subject / 'dicom').glob('*.dcm'))) == slices
        assert (bids_dir / 'sourcedata' / subject / 'nrrd' / f'{subject}_ct.nrrd').is_file()
    # Nothing but the dataset: no staging directory left beside it.
    assert [p.name for p in bids_dir.parent.iterdir()] == ['bids']
    assert '*_ct.*' in (bids_dir / '.bidsignore').read_text().split()
    size = sum(p.stat().st_size for p in bids_dir.rglob('*') if p.is_file())
    assert size < 40e6


def test_dataset_description_and_readme(bids_dir: Path) -> None:
    description = json.loads((bids_dir / 'dataset_description.json').read_text())
    assert description['Name'] == 'mrctprep demo'
    assert description['BIDSVersion'] == '1.10.0'
    assert description['DatasetType'] == 'raw'
    assert description['License'] == 'CC0'
    readme = (bids_dir / 'README').read_text()
    assert 'ICBM152' in readme
    assert 'Fonov' in readme
    assert 'nilearn' in readme


def test_participants_travel_between_sites(bids_dir: Path) -> None:
    with open(bids_dir / 'participants.tsv', newline='') as f:
        rows = list(csv.DictReader(f, delimiter='\t'))
    assert [r['participant_id'] for r in rows] == [f'sub-{label}' for label in SUBJECTS]
    assert {(r['site'], r['traveller']) for r in rows} == {
        (site, anatomy) for site in ('siteA', 'siteB') for anatomy in ('A', 'B')
    }
    # A traveller is one person: same age and sex at both sites.
    for anatomy in ('A', 'B'):
        assert len({(r['age'], r['sex']) for r in rows if r['traveller'] == anatomy}) == 1
    columns = json.loads((bids_dir / 'participants.json').read_text())
    assert set(rows[0]) - {'participant_id'} <= set(columns)


def test_pybids_finds_subjects_and_t1w(bids_dir: Path) -> None:
    layout = BIDSLayout(bids_dir, validate=False)
    assert layout.get_subjects() == list(SUBJECTS)
    t1w = layout.get(suffix='T1w', extension='.nii.gz')
    assert [f.entities['subject'] for f in t1w] == list(SUBJECTS)
    tesla = {f.entities['subject']: f.get_metadata()['MagneticFieldStrength'] for f in t1w}
    assert tesla == {'01': 3, '02': 1.5, '03': 3, '04': 1.5}


@pytest.mark.parametrize('label', SUBJECTS)
def test_t1w_geometry(bids_dir: Path, template_brain_centre: np.ndarray, label: str) -> None:
    img = _image(bids_dir, label, 'T1w')
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.header.get_zooms(), 1.0)
    expected_axes = ('R', 'A', 'S') if SITE_OF[label] == 'siteA' else ('A', 'S', 'L')
    assert nib.aff2axcodes(img.affine) == expected_axes

    # The brain found without the template (deep inside the head, brighter than CSF) sits
    # where the template's brain is, give or take the pose.
    canonical, depth = _head_depth_mm(img, 0.2 * np.percentile(np.asanyarray(img.dataobj), 99))
    data = canonical.get_fdata(dtype=np.float32)
    deep = depth > 16
    brain = deep & (data > 0.5 * np.percentile(data[deep], 90))
    centre = nib.affines.apply_affine(canonical.affine, ndi.center_of_mass(brain))
    assert np.linalg.norm(centre - template_brain_centre) < 15


@pytest.mark.parametrize('label', [p.label for p in demo.PARTICIPANTS if p.anatomy == 'A'])
def test_t1w_is_the_template_at_the_site_pose(
    bids_dir: Path, template: nib.Nifti1Image, template_brain_centre: np.ndarray, label: str
) -> None:
    img = _image(bids_dir, label, 'T1w')
    pose = demo.SITES[SITE_OF[label]].t1w.pose
    matrix = head_pose(pose.rotation_deg, pose.translation_mm, template_brain_centre)
    # Undo the pose in the image's world coordinates; then it must match the template voxel
    # for voxel, which fails for any wrong axis, flip or offset in the affine.
    unposed = nib.Nifti1Image(np.asanyarray(img.dataobj), np.linalg.inv(matrix) @ img.affine)
    resampled = _on_grid(unposed, template)
    mask = template.get_fdata() > 0
    assert np.corrcoef(resampled[mask], template.get_fdata()[mask])[0, 1] > 0.9
    # Without undoing the pose, the match is clearly worse.
    posed = _on_grid(img, template)
    assert np.corrcoef(posed[mask], template.get_fdata()[mask])[0, 1] < 0.85


@pytest.mark.parametrize('label', SUBJECTS)
def test_t1w_head_has_skull_and_scalp(
    bids_dir: Path, template: nib.Nifti1Image, label: str
) -> None:
    img = _image(bids_dir, label, 'T1w')
    canonical, depth = _head_depth_mm(img, 0.2 * np.percentile(np.asanyarray(img.dataobj), 99))
    head = depth > 0
    brain = _on_grid(template, canonical, order=0) > 0
    assert (head & ~brain).sum() / head.sum() > 0.3

    data = canonical.get_fdata(dtype=np.float32)
    # Above the ears, the skull lies 6-10 mm below the surface (under ~5 mm of scalp). The
    # scanner grids are axis-aligned, so world z depends on the axial index only.
    z = canonical.affine[2, 2] * np.arange(data.shape[2]) + canonical.affine[2, 3]
    upper = np.broadcast_to(z > 20, data.shape)
    skull = data[upper & (depth > 6) & (depth < 10)]
    brain_signal = data[upper & (depth > 20)]
    assert np.median(skull) < 0.5 * np.median(brain_signal)


@pytest.mark.parametrize('label', SUBJECTS)
def test_ct_hounsfield_units(bids_dir: Path, template: nib.Nifti1Image, label: str) -> None:
    img = _image(bids_dir, label, 'ct')
    assert img.get_data_dtype() == np.int16
    hu = np.asanyarray(img.dataobj)
    assert hu.min() >= -1024
    assert hu.max() <= 3071

    border = np.concatenate(
        [hu[:2].ravel(), hu[-2:].ravel(), hu[:, :2].ravel(), hu[:, -2:].ravel()]
    )
    assert np.median(border) < -900

    brain_core = ndi.binary_erosion(template.get_fdata() > 0, iterations=6)
    core = nib.Nifti1Image(brain_core.astype(np.float32), template.affine)
    in_ct = _on_grid(core, img, order=0) > 0
    assert 20 <= np.median(hu[in_ct]) <= 50

    canonical, depth = _head_depth_mm(img, -300)
    bone = canonical.get_fdata(dtype=np.float32)[(depth > 5) & (depth < 10)]
    assert np.percentile(bone, 90) > 700

    sidecar = _sidecar(bids_dir, label, 'ct')
    assert sidecar['Modality'] == 'CT'
    assert sidecar['Units'] == 'HU'
    assert sidecar['SliceThickness'] == pytest.approx(img.header.get_zooms()[2])


def test_ct_protocols_differ_between_sites(bids_dir: Path) -> None:
    sidecars = {label: _sidecar(bids_dir, label, 'ct') for label in SUBJECTS}
    for key in ('ConvolutionKernel', 'KVP', 'Manufacturer'):
        assert sidecars['01'][key] == sidecars['03'][key] != sidecars['02'][key]
        assert sidecars['02'][key] == sidecars['04'][key]


@pytest.mark.parametrize('label', SUBJECTS)
def test_dicom_series_matches_nifti(bids_dir: Path, label: str) -> None:
    nifti = _image(bids_dir, label, 'ct')
    series = bids_dir / 'sourcedata' / f'sub-{label}' / 'dicom'
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    _assert_same_image(_sitk_to_nifti(reader.Execute()), nifti)

    first = pydicom.dcmread(sorted(series.glob('*.dcm'))[0])
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == '1.2.840.10008.5.1.4.1.1.2'
    assert first.PatientID == f'sub-{label}'
    sidecar = _sidecar(bids_dir, label, 'ct')
    assert first.ConvolutionKernel == sidecar['ConvolutionKernel']
    assert float(first.KVP) == sidecar['KVP']
    assert float(first.SliceThickness) == pytest.approx(nifti.header.get_zooms()[2])


@pytest.mark.parametrize('label', SUBJECTS)
def test_nrrd_matches_nifti(bids_dir: Path, label: str) -> None:
    nifti = _image(bids_dir, label, 'ct')
    path = bids_dir / 'sourcedata' / f'sub-{label}' / 'nrrd' / f'sub-{label}_ct.nrrd'
    data, header = nrrd.read(str(path))
    assert header['space'] == 'left-posterior-superior'
    assert header['encoding'] == 'gzip'
    np.testing.assert_array_equal(data, np.asanyarray(nifti.dataobj))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(header['space directions']).T
    lps[:3, 3] = header['space origin']
    np.testing.assert_allclose(LPS_FROM_RAS @ lps, nifti.affine, atol=1e-6)

    _assert_same_image(_sitk_to_nifti(sitk.ReadImage(str(path))), nifti)


def test_same_seed_same_images_other_seed_other_noise(bids_dir: Path) -> None:
    anatomy = demo.build_anatomy('A', load_mni152_tissues())
    site = demo.SITES[SITE_OF['01']]
    written = _image(bids_dir, '01', 'T1w')

    again = demo.acquire_t1w(anatomy, site.t1w, demo.acquisition_rng(0, '01', 'T1w'))
    np.testing.assert_array_equal(np.asanyarray(again.dataobj), np.asanyarray(written.dataobj))
    np.testing.assert_array_equal(again.affine, written.affine)
    ct = demo.acquire_ct(anatomy, site.ct, demo.acquisition_rng(0, '01', 'ct'))
    np.testing.assert_array_equal(
        np.asanyarray(ct.dataobj), np.asanyarray(_image(bids_dir, '01', 'ct').dataobj)
    )

    other = demo.acquire_t1w(anatomy, site.t1w, demo.acquisition_rng(1, '01', 'T1w'))
    other_data = np.asanyarray(other.dataobj)
    assert other_data.shape == written.shape
    assert np.mean(other_data != np.asanyarray(written.dataobj)) > 0.5
    # Only the noise and the bias field differ: it is the same head at the same place.
    r = np.corrcoef(other_data.ravel(), np.asanyarray(written.dataobj).ravel())[0, 1]
    assert r > 0.99


@pytest.mark.parametrize('orientation', ['RAS', 'ASL', 'PIR'])
def test_dicom_writer_keeps_geometry_of_any_orientation(tmp_path: Path, orientation: str) -> None:
    # An oblique grid (rotated a few degrees) stored in a non-DICOM voxel order.
    affine = head_pose((5.0, -3.0, 7.0), (1.0, 2.0, 3.0), np.zeros(3)) @ np.diag([0.8, 0.9, 2, 1])
    affine[:3, 3] += (-10.3, 20.1, -30.7)
    hu = np.random.default_rng(0).integers(-1024, 3072, size=(20, 30, 12), dtype=np.int16)
    ornt = ornt_transform(axcodes2ornt('RAS'), axcodes2ornt(tuple(orientation)))
    img = nib.Nifti1Image(hu, affine).as_reoriented(ornt)
    paths = write_ct_dicom_series(
        img, tmp_path, meta={}, series_description='test', patient_id='sub-x', uid_seed='x'
    )
    assert len(paths) == 12
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])
    _assert_same_image(_sitk_to_nifti(reader.Execute()), img)


def test_dicom_writer_refuses_values_outside_ct_range(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.full((4, 4, 2), 3072, dtype=np.int16), np.eye(4))
    with pytest.raises(ValueError, match='3071'):
        write_ct_dicom_series(
            img, tmp_path, meta={}, series_description='x', patient_id='x', uid_seed='x'
        )


def test_dicom_uids_depend_on_seed_only(bids_dir: Path, tmp_path: Path) -> None:
    ct = _image(bids_dir, '01', 'ct')
    meta = {'KVP': 120}
    first = write_ct_dicom_series(
        ct, tmp_path / 'a', meta=meta, series_description='x', patient_id='sub-01', uid_seed='seed'
    )
    again = write_ct_dicom_series(
        ct, tmp_path / 'b', meta=meta, series_description='x', patient_id='sub-01', uid_seed='seed'
    )
    other = write_ct_dicom_series(
        ct,
        tmp_path / 'c',
        meta=meta,
        series_description='x',
        patient_id='sub-01',
        uid_seed='other seed',
    )
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in first]
    assert len(set(uids)) == len(uids)
    assert not set(uids) & {pydicom.dcmread(p).SOPInstanceUID for p in other}
    a, c = pydicom.dcmread(first[0]), pydicom.dcmread(other[0])
    assert a.SeriesInstanceUID != c.SeriesInstanceUID
    assert a.PixelData == c.PixelData


def test_deformed_anatomy_differs_from_template(bids_dir: Path) -> None:
    # Same site, same pose: only the anatomy differs between sub-01 and sub-03.
    assert SITE_OF['01'] == SITE_OF['03']
    assert ANATOMY_OF['01'] != ANATOMY_OF['03']
    template_head = _image(bids_dir, '01', 'T1w')
    deformed_head = _on_grid(_image(bids_dir, '03', 'T1w'), template_head)
    template_data = template_head.get_fdata(dtype=np.float32)
    head = (template_data > 20) | (deformed_head > 20)
    r = np.corrcoef(template_data[head], deformed_head[head])[0, 1]
    assert 0.8 < r < 0.99


def test_refuses_non_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / 'bids'
    target.mkdir()
    (target / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='not an empty directory'):
        demo.write_demo_dataset(target)
    assert [p.name for p in target.iterdir()] == ['keep.txt']
    assert [p.name for p in tmp_path.iterdir()] == ['bids']


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise RuntimeError('interrupted')

    monkeypatch.setattr(demo, 'load_mni152_tissues', fail)
    with pytest.raises(RuntimeError, match='interrupted'):
        demo.write_demo_dataset(tmp_path / 'bids')
    assert list(tmp_path.iterdir()) == []


def test_a_larger_demo_keeps_the_travelling_design_and_the_default_unchanged() -> None:
    assert demo.demo_participants() == demo.PARTICIPANTS
    cohort = demo.demo_participants(per_site=8, sites=3)
    assert len(cohort) == 24 and len({p.label for p in cohort}) == 24
    for anatomy in {p.anatomy for p in cohort}:
        scans = [p for p in cohort if p.anatomy == anatomy]
        assert sorted(p.site for p in scans) == ['siteA', 'siteB', 'siteC']
        assert len({(p.age, p.sex) for p in scans}) == 1
    extra = demo.site_protocols('siteC').t1w
    low, high = sorted(demo.SITES[s].t1w.contrast.white_matter for s in ('siteA', 'siteB'))
    assert low < extra.contrast.white_matter < high
    assert extra.orientation not in {demo.SITES[s].t1w.orientation for s in demo.SITES}
    with pytest.raises(ValueError, match='1 to 26 participants per site'):
        demo.demo_participants(per_site=27)
