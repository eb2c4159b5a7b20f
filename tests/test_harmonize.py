"""MR harmonization end to end on the demo's travelling subjects: group --train iguane from
scratch on CPU, participant --pipelines mr-harmonize, and the group tables after it."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nb
import numpy as np
import pytest
import torch

from conftest import run_cli
from mrctprep.group.harmonization import combat_installed
from mrctprep.imaging.intensity import CropBox
from mrctprep.imaging.registration import RigidTransform, cropped_mni_to_native
from mrctprep.models.iguane import harmonize_volume, load_generator
from mrctprep.models.weights import sha256_of

SPACE = 'space-MNI152NLin2009aSym_res-1'
#: A few minutes of CPU training on 32^3 crops (the networks are fully convolutional).
TRAIN_OPTIONS = ('--steps', '10', '--train-patch-size', '32', '--checkpoint-every', '5')


@pytest.fixture(scope='module')
def harmonized_demo(demo_run, demo_bids, tmp_path_factory):
    """The demo's mr-preproc outputs, a model trained on them, and every T1w harmonized."""
    participant, _, derivatives = demo_run
    assert participant.returncode == 0, participant.stderr
    out = tmp_path_factory.mktemp('harmonize') / 'derivatives'
    shutil.copytree(derivatives, out, ignore=shutil.ignore_patterns('*_ct.*', 'log'))
    work = derivatives.parent / 'work'  # mr-preproc's cache: only harmonization runs anew
    train = run_cli(demo_bids, out, 'group', '-w', work, '--train', 'iguane', *TRAIN_OPTIONS)
    # one torch thread, as the check below: bfloat16 inference sums in another order with
    # another thread count (up to ~5 on the 500 scale on an AVX512-BF16 CPU)
    harmonize = run_cli(
        demo_bids,
        out,
        'participant',
        '-w',
        work,
        '--pipelines',
        'mr-harmonize',
        '--omp-nthreads',
        '1',
    )
    group = run_cli(demo_bids, out, 'group', '-w', work)
    return train, harmonize, group, out


def _image(out, subject, name):
    return nb.load(out / f'sub-{subject}' / 'anat' / f'sub-{subject}_{name}.nii.gz')


def test_training_writes_weights_card_log_and_loss_plot(harmonized_demo):
    train, _, _, out = harmonized_demo
    assert train.returncode == 0, train.stderr
    assert 'iguane [####################] 10/10 steps' in train.stderr
    models = out / 'models' / 'iguane'
    card = json.loads((models / 'iguane.json').read_text())
    assert card['sha256'] == sha256_of(models / 'iguane.pt')
    assert card['trained']['ReferenceSite'] == 'siteA'
    assert card['trained']['Sites'] == {'siteA': 2, 'siteB': 2}
    assert card['trained']['PatchSize'] == [32, 32, 32] and card['trained']['Steps'] == 10
    assert card['trained']['HeadInitScale'] == 1.0  # upstream's initialisation by default
    rows = list(csv.DictReader((models / 'training_log.tsv').open(), delimiter='\t'))
    assert [int(row['step']) for row in rows] == list(range(1, 11))
    assert all(np.isfinite(float(row['loss_G'])) for row in rows)
    assert (models / 'training_loss.png').read_bytes()[:4] == b'\x89PNG'
    assert 'models/' in (out / '.bidsignore').read_text()


def test_harmonized_image_is_the_trained_generator_applied_to_the_model_input(
    harmonized_demo,
):
    """The node applies the trained weights in IGUANe's intensity convention (recomputed here
    from the weights file). Whether 10 CPU steps harmonize is not asked here: they do not
    (the issue's >= 30 % needs thousands of steps; benchmarks/mr_harmonize.py measures it)."""
    _, harmonize, _, out = harmonized_demo
    assert harmonize.returncode == 0, harmonize.stderr
    weights = out / 'models' / 'iguane' / 'iguane.pt'
    generator = load_generator(str(weights), sha256_of(weights), 'cpu')
    for subject in ('01', '02', '03', '04'):
        model_input = _image(out, subject, f'{SPACE}_desc-norm_T1w')
        harmonized = _image(out, subject, f'{SPACE}_desc-harmonized_T1w')
        raw, result = model_input.get_fdata(dtype=np.float32), harmonized.get_fdata()
        np.testing.assert_allclose(harmonized.affine, model_input.affine)
        assert harmonized.shape == raw.shape == (160, 192, 160)
        assert np.all(result[raw == 0] == 0) and result.min() >= 0 and np.isfinite(result).all()
        assert np.abs(result - raw)[raw > 0].mean() > 1  # trained weights, not the identity
        if subject == '01':
            # trained on 32^3 crops, so run in crops of that size (as the sidecar says)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                expected = harmonize_volume(raw, generator, 'cpu', tile=(32, 32, 32))
            finally:
                torch.set_num_threads(threads)
            assert np.abs(result - expected).max() < 0.5  # same weights, convention, precision
            sidecar = json.loads(
                (out / f'sub-01/anat/sub-01_{SPACE}_desc-harmonized_T1w.json').read_text()
            )
            assert sidecar['Inference'].startswith('crops of 32x32x32 voxels as in training')


def test_harmonized_images_come_back_to_the_native_grid_with_their_provenance(
    harmonized_demo,
):
    _, _, _, out = harmonized_demo
    weights_sha256 = sha256_of(out / 'models' / 'iguane' / 'iguane.pt')
    for subject in ('01', '02'):
        native = _image(out, subject, 'desc-harmonized_T1w')
        preproc = _image(out, subject, 'desc-preproc_T1w')
        mask = _image(out, subject, 'desc-brain_mask').get_fdata() > 0
        assert native.shape == preproc.shape
        np.testing.assert_allclose(native.affine, preproc.affine, atol=1e-5)
        data = native.get_fdata()
        assert np.all(data[~mask] == 0) and (data[mask] > 0).mean() > 0.95
        box = json.loads(
            (out / f'sub-{subject}/anat/sub-{subject}_{SPACE}_desc-norm_T1w.json').read_text()
        )['CropBox']
        transform = (
            out
            / f'sub-{subject}/anat/sub-{subject}_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.txt'
        )
        expected = (
            cropped_mni_to_native(
                _image(out, subject, f'{SPACE}_desc-harmonized_T1w'),
                CropBox(tuple(box['start']), tuple(box['size'])),
                RigidTransform.from_itk(transform),
                preproc,
            ).get_fdata()
            * mask
        )
        np.testing.assert_allclose(data, expected, atol=1e-3)  # inverse crop + inverse rigid
        sidecar = json.loads(
            (out / f'sub-{subject}/anat/sub-{subject}_desc-harmonized_T1w.json').read_text()
        )
        assert sidecar['ModelWeightsSHA256'] == weights_sha256
        assert sidecar['Sources'][0].endswith(f'sub-{subject}_T1w.nii.gz')
        assert (out / f'sub-{subject}/figures/sub-{subject}_desc-harmonized_T1w.svg').is_file()


def test_group_table_puts_raw_combat_and_iguane_side_by_side(harmonized_demo):
    _, _, group, out = harmonized_demo
    assert group.returncode == 0, group.stderr
    rows = list(csv.DictReader((out / 'group_harmonization.tsv').open(), delimiter='\t'))
    assert {row['participant_id'] for row in rows} == {'sub-01', 'sub-02', 'sub-03', 'sub-04'}
    assert all(row['iguane'] != 'n/a' and row['raw'] != 'n/a' for row in rows)
    summary = {
        row['method']: row
        for row in csv.DictReader((out / 'group_harmonization_summary.tsv').open(), delimiter='\t')
    }
    assert set(summary) == {'raw', 'iguane'} | ({'combat'} if combat_installed() else set())
