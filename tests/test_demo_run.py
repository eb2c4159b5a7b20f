"""The README's main job: a participant run, then the group level, on the demo dataset."""

from __future__ import annotations

import csv
import json

import nibabel as nb
import numpy as np
import pytest

from conftest import run_cli


@pytest.fixture(scope='module')
def demo_run(demo_bids, tmp_path_factory):
    root = tmp_path_factory.mktemp('demo_run')
    participant = run_cli(demo_bids, root / 'derivatives', 'participant', '-w', root / 'work')
    group = run_cli(demo_bids, root / 'derivatives', 'group', '-w', root / 'work')
    return participant, group, root / 'derivatives'


def test_every_subject_finishes(demo_run):
    participant, group, out = demo_run
    assert participant.returncode == 0, participant.stderr
    assert 'All 4 subject(s) finished' in participant.stderr
    assert group.returncode == 0, group.stderr
    images = sorted(p.name for p in out.glob('sub-*/anat/*.nii.gz'))
    assert images == [f'sub-0{s}_desc-reorient_{suffix}.nii.gz' for s in '1234'
                      for suffix in ('T1w', 'ct')]  # fmt: skip
    assert len(list(out.glob('sub-*/figures/*.svg'))) == 8


@pytest.mark.parametrize('subject', ['01', '02', '03', '04'])
def test_each_t1w_is_ras_with_every_voxel_in_place(demo_run, demo_bids, subject):
    _, _, out = demo_run
    raw = nb.load(demo_bids / f'sub-{subject}/anat/sub-{subject}_T1w.nii.gz')
    derived = nb.load(out / f'sub-{subject}/anat/sub-{subject}_desc-reorient_T1w.nii.gz')
    sidecar = json.loads(
        (out / f'sub-{subject}/anat/sub-{subject}_desc-reorient_T1w.json').read_text()
    )
    assert nb.aff2axcodes(derived.affine) == ('R', 'A', 'S')
    assert sidecar['OriginalOrientation'] == ''.join(nb.aff2axcodes(raw.affine))
    mapping = np.array(sidecar['VoxelMappingOriginalToRAS'])
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in raw.shape])).reshape(3, -1).T
    np.testing.assert_allclose(
        nb.affines.apply_affine(derived.affine, nb.affines.apply_affine(mapping, corners)),
        nb.affines.apply_affine(raw.affine, corners),
        atol=1e-4,
    )
    assert np.isclose(derived.get_fdata().sum(), raw.get_fdata().sum(), rtol=1e-6)


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
        raw = nb.load(demo_bids / f'sub-0{subject}/anat/sub-0{subject}_ct.nii.gz')
        derived = nb.load(out / f'sub-0{subject}/anat/sub-0{subject}_desc-reorient_ct.nii.gz')
        assert derived.get_data_dtype() == np.int16
        values = derived.get_fdata()
        assert np.median(values[values < -500]) < -900  # air
        assert np.array_equal(np.sort(values, axis=None), np.sort(raw.get_fdata(), axis=None))
