"""The README's main job: a participant run, then the group level, on the demo dataset."""

from __future__ import annotations

import csv
import json

import nibabel as nb
import numpy as np
import pytest

SPACE = 'space-MNI152NLin2009aSym_res-1'


def test_every_subject_finishes_with_the_default_pipelines(demo_run):
    participant, group, out = demo_run
    assert participant.returncode == 0, participant.stderr
    assert 'All 4 subject(s) finished' in participant.stderr
    assert group.returncode == 0, group.stderr
    for subject in ('01', '02', '03', '04'):
        anat = out / f'sub-{subject}' / 'anat'
        for name in (
            'desc-preproc_T1w',
            'desc-brain_mask',
            'desc-biasfield_T1w',
            f'{SPACE}_desc-preproc_T1w',
            f'{SPACE}_desc-norm_T1w',
            'desc-preproc_ct',
        ):
            assert (anat / f'sub-{subject}_{name}.nii.gz').is_file(), name
        figures = sorted(p.name for p in (out / f'sub-{subject}' / 'figures').iterdir())
        assert figures == [
            f'sub-{subject}_desc-brainmask_T1w.svg',
            f'sub-{subject}_desc-preproc_ct.svg',
            f'sub-{subject}_space-MNI152NLin2009aSym_T1w.svg',
        ]


@pytest.mark.parametrize('subject', ['01', '02', '03', '04'])
def test_native_t1w_is_ras_with_every_voxel_in_place(demo_run, demo_bids, subject):
    _, _, out = demo_run
    raw = nb.load(demo_bids / f'sub-{subject}/anat/sub-{subject}_T1w.nii.gz')
    stem = out / f'sub-{subject}/anat/sub-{subject}_desc-preproc_T1w'
    derived = nb.load(f'{stem}.nii.gz')
    sidecar = json.loads(stem.with_suffix('.json').read_text())
    assert nb.aff2axcodes(derived.affine) == ('R', 'A', 'S')
    assert sidecar['OriginalOrientation'] == ''.join(nb.aff2axcodes(raw.affine))
    mapping = np.array(sidecar['VoxelMappingOriginalToRAS'])
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in raw.shape])).reshape(3, -1).T
    np.testing.assert_allclose(
        nb.affines.apply_affine(derived.affine, nb.affines.apply_affine(mapping, corners)),
        nb.affines.apply_affine(raw.affine, corners),
        atol=1e-4,
    )
    # N4 removes the site's bias field: the corrected image equals raw / field everywhere,
    # to within the int16 steps that both are stored at.
    field = nb.load(out / f'sub-{subject}/anat/sub-{subject}_desc-biasfield_T1w.nii.gz')
    raw_ras = nb.as_closest_canonical(raw).get_fdata()
    assert derived.get_data_dtype() == field.get_data_dtype() == np.int16
    np.testing.assert_allclose(
        derived.get_fdata() * field.get_fdata(),
        raw_ras,
        rtol=1e-4 + field.dataobj.slope,
        atol=1e-3 + derived.dataobj.slope,
    )


def test_travelling_heads_agree_in_mni_space(demo_run, demo_bids):
    """The same anatomy scanned at both sites gives the same normalised MNI brain."""
    _, _, out = demo_run
    with open(demo_bids / 'participants.tsv') as table:
        rows = list(csv.DictReader(table, delimiter='\t'))
    by_anatomy = {}
    for row in rows:
        by_anatomy.setdefault(row['traveller'], []).append(row['participant_id'])
    for subjects in by_anatomy.values():
        images = [
            nb.load(out / s / 'anat' / f'{s}_{SPACE}_desc-norm_T1w.nii.gz') for s in subjects
        ]
        a, b = (img.get_fdata() for img in images)
        for data in (a, b):
            assert np.median(data[data > 0]) == pytest.approx(500, abs=1)
        inside = (a > 0) & (b > 0)
        assert 2 * inside.sum() / ((a > 0).sum() + (b > 0).sum()) > 0.95  # brain overlap
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_group_table_shows_site_b_was_stored_in_another_orientation(demo_run, demo_bids):
    _, _, out = demo_run
    with open(demo_bids / 'participants.tsv') as table:
        site = {
            row['participant_id']: row['site'] for row in csv.DictReader(table, delimiter='\t')
        }
    with open(out / 'group_T1w.tsv') as table:
        rows = list(csv.DictReader(table, delimiter='\t'))
    orientation = {row['participant_id']: row['original_orientation'] for row in rows}
    assert sorted(orientation) == sorted(site)
    assert {orientation[p] for p in site if site[p] == 'siteA'} == {'RAS'}
    assert {orientation[p] for p in site if site[p] == 'siteB'} - {'RAS'}


def test_ct_keeps_hounsfield_units_and_int16(demo_run, demo_bids):
    _, _, out = demo_run
    for subject in '1234':
        derived = nb.load(out / f'sub-0{subject}/anat/sub-0{subject}_desc-preproc_ct.nii.gz')
        assert derived.get_data_dtype() == np.int16
        assert nb.aff2axcodes(derived.affine) == ('R', 'A', 'S')
        values = derived.get_fdata()
        assert np.median(values[values < -500]) < -900  # air
        assert 20 < np.median(values[(values > 0) & (values < 80)]) < 50  # brain
