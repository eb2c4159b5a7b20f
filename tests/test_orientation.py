"""Reorientation to RAS+ on real images: world coordinates, values and header codes exact."""

from __future__ import annotations

import gzip

import nibabel as nb
import numpy as np
import pytest

from conftest import SHARED_DATA
from mrctprep.imaging.io import ImageReadError, load_image
from mrctprep.imaging.orientation import reorient_to_ras

REAL_IMAGES = [
    'mr/studyforrest_T1w.nii.gz',  # LPS, oblique, int16
    'mr/colin27_t1_head.nii.gz',  # qform_code 0, sform_code 4
    'mr/seg3d_t1_head.nii.gz',  # uint8 with scl_slope 2.00784
    'mr/chris_pd.nii.gz',  # oblique, 2.4 mm slabs
    'ct/totalseg_pulmonary_ct_cropped.nii.gz',  # LPS CT in HU
]


def _voxel_world_values(img: nb.Nifti1Image, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates and values of voxels given as (N, 3) indices."""
    world = nb.affines.apply_affine(img.affine, sample)
    values = img.get_fdata()[tuple(sample.T)]
    return world, values


@pytest.mark.parametrize('relative', REAL_IMAGES)
def test_reorientation_keeps_every_voxel_at_its_world_position(relative, tmp_path):
    original = load_image(SHARED_DATA / relative)
    reoriented, record = reorient_to_ras(original)
    reoriented.to_filename(tmp_path / 'ras.nii.gz')
    saved = nb.load(tmp_path / 'ras.nii.gz')

    assert nb.aff2axcodes(saved.affine) == ('R', 'A', 'S')
    assert record.original_orientation == ''.join(nb.aff2axcodes(original.affine))
    rng = np.random.default_rng(0)
    sample = np.stack([rng.integers(0, n, 2000) for n in original.shape[:3]], axis=1)
    world, values = _voxel_world_values(original, sample)
    mapped = nb.affines.apply_affine(record.voxel_mapping, sample).round().astype(int)
    world_after, values_after = _voxel_world_values(saved, mapped)
    np.testing.assert_allclose(world_after, world, atol=1e-4)
    # Scaled integers are stored as float32: equal to float32 precision.
    np.testing.assert_allclose(values_after, values, rtol=1e-6)
    # Whole-image checks: same voxels, same world box.
    assert sorted(saved.shape) == sorted(original.shape)
    np.testing.assert_allclose(
        np.sort(saved.get_fdata(), axis=None), np.sort(original.get_fdata(), axis=None), rtol=1e-6
    )


@pytest.mark.parametrize('relative', REAL_IMAGES)
def test_qform_and_sform_keep_their_codes(relative, tmp_path):
    original = load_image(SHARED_DATA / relative)
    reoriented, _ = reorient_to_ras(original)
    reoriented.to_filename(tmp_path / 'ras.nii.gz')
    saved = nb.load(tmp_path / 'ras.nii.gz')
    for getter in ('get_qform', 'get_sform'):
        _, code_before = getattr(original.header, getter)(coded=True)
        matrix_after, code_after = getattr(saved.header, getter)(coded=True)
        assert int(code_after) == int(code_before)
        if int(code_before):
            assert nb.aff2axcodes(matrix_after) == ('R', 'A', 'S')


def test_lps_image_really_changes_and_ras_image_does_not():
    lps = load_image(SHARED_DATA / 'mr' / 'studyforrest_T1w.nii.gz')
    ras_img, record = reorient_to_ras(lps)
    assert record.original_orientation == 'LPS'
    assert ras_img.shape == (274, 384, 384)
    assert not np.allclose(record.voxel_mapping, np.eye(4))
    assert np.array_equal(ras_img.get_fdata()[::-1, ::-1, :], lps.get_fdata())

    ras = load_image(SHARED_DATA / 'mr' / 'stroke_t1_brain.nii.gz')
    same, record = reorient_to_ras(ras)
    np.testing.assert_array_equal(record.voxel_mapping, np.eye(4))
    np.testing.assert_array_equal(same.affine, ras.affine)


def test_storage_type_is_kept_or_widened_to_float32():
    ct = reorient_to_ras(load_image(SHARED_DATA / 'ct' / 'totalseg_pulmonary_ct_cropped.nii.gz'))[
        0
    ]
    assert ct.get_data_dtype() == np.int16
    scaled = reorient_to_ras(load_image(SHARED_DATA / 'mr' / 'seg3d_t1_head.nii.gz'))[0]
    assert scaled.get_data_dtype() == np.float32
    assert scaled.get_fdata().max() == pytest.approx(512, abs=0.01)


def test_truncated_and_non_image_files_name_the_file(tmp_path):
    truncated = tmp_path / 'sub-01_T1w.nii.gz'
    truncated.write_bytes((SHARED_DATA / 'mr' / 'colin27_t1_head.nii.gz').read_bytes()[:200_000])
    with pytest.raises(
        ImageReadError, match=r'sub-01_T1w\.nii\.gz: cannot read image .*truncated'
    ):
        load_image(truncated)
    not_image = tmp_path / 'notes.nii.gz'
    not_image.write_bytes(gzip.compress(b'hello'))
    with pytest.raises(ImageReadError, match='notes.nii.gz: cannot read image'):
        load_image(not_image)
    with pytest.raises(ImageReadError, match='absent.nii.gz: file not found'):
        load_image(tmp_path / 'absent.nii.gz')
