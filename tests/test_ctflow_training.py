"""``group --train ctflow``: pairs from rec- entities, grids checked, exact resume, outputs."""

from __future__ import annotations

import json
import shutil

import nibabel as nb
import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, write_bids
from mrctprep.cli.errors import describe_error
from mrctprep.cli.main import run as run_command
from mrctprep.core.errors import InputError
from mrctprep.group.ctflow_training import find_reconstruction_pairs, load_slice_pairs
from mrctprep.models.ctflow_training import CTFlowSettings, CTFlowTraining
from mrctprep.models.training import TrainingSettings, run_training
from mrctprep.models.weights import sha256_of


@pytest.fixture(scope='module')
def paired_dataset(tmp_path_factory):
    """One small real CT (64x64x2 voxels at 3 mm) and two reconstructions of it; the
    'sharp25' one a noisier, sharpened copy standing in for simulate-ct's output (tested in
    test_ct_simulation.py)."""
    source = nb.load(SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz')
    hu = np.asarray(source.dataobj)[30:94, 20:84, 10:12].astype(np.float32)
    rng = np.random.default_rng(0)
    sharp = hu + rng.normal(0, 40, hu.shape)
    root = tmp_path_factory.mktemp('ctflow') / 'bids'
    staged = root.parent / 'staged'
    staged.mkdir()
    files = {}
    for label, kernel, data in (('standard100', 'standard', hu), ('sharp25', 'sharp', sharp)):
        path = staged / f'{label}.nii.gz'
        nb.Nifti1Image(np.rint(data).astype(np.int16), source.affine).to_filename(path)
        files[f'sub-01/anat/sub-01_rec-{label}_ct.nii.gz'] = path
        files[f'sub-01/anat/sub-01_rec-{label}_ct.json'] = json.dumps(
            {'ConvolutionKernel': f'simulated-{kernel}', 'KVP': 120, 'Modality': 'CT'}
        ).encode()
    files['sub-01/anat/sub-01_ct.nii.gz'] = staged / 'standard100.nii.gz'
    return write_bids(root, files, ['01'])


def test_pairs_come_from_rec_entities_and_differing_grids_are_refused(paired_dataset, tmp_path):
    pairs = find_reconstruction_pairs(paired_dataset, 'standard100')
    assert [(p.source.name, p.reference.name) for p in pairs] == [
        ('sub-01_rec-sharp25_ct.nii.gz', 'sub-01_rec-standard100_ct.nii.gz')
    ]
    slices = load_slice_pairs(pairs[0], crop=32)
    assert len(slices) == 2 and slices[0][0].shape == (64, 64)
    assert 0.0 <= slices[0][1].min() and slices[0][1].max() <= 1.0
    with pytest.raises(InputError, match='rec-smooth10 reference.*sharp25, standard100') as no:
        find_reconstruction_pairs(paired_dataset, 'smooth10')
    assert describe_error(no.value).endswith('`mrctprep simulate-ct BIDS_DIR` makes pairs from '
                                             'single CTs')  # fmt: skip

    other = tmp_path / 'bids'
    shutil.copytree(paired_dataset, other)
    target = other / 'sub-01/anat/sub-01_rec-sharp25_ct.nii.gz'
    image = nb.load(target)
    nb.Nifti1Image(np.asarray(image.dataobj)[:60], image.affine).to_filename(target)
    with pytest.raises(InputError, match='not on one grid'):
        load_slice_pairs(find_reconstruction_pairs(other, 'standard100')[0], crop=32)


def _pairs(paired_dataset):
    return load_slice_pairs(find_reconstruction_pairs(paired_dataset, 'standard100')[0], 32)


def test_resumed_training_equals_the_uninterrupted_one(paired_dataset, tmp_path):
    slices = _pairs(paired_dataset)
    settings = CTFlowSettings(steps=4, crop=16, batch=2, seed=3)  # 1 L1 step, then the flow
    states = {}
    for name, stops in (('straight', [4]), ('resumed', [2, 4])):
        checkpoint = tmp_path / name / 'checkpoint.pt'
        for index, stop in enumerate(stops):
            torch.manual_seed(0)
            task = CTFlowTraining(slices, settings)
            history = run_training(
                task,
                TrainingSettings('ctflow', stop, checkpoint, checkpoint_every=2, resume=index > 0),
            )
        states[name] = (task.model.state_dict(), history)
    straight, resumed = states['straight'], states['resumed']
    assert [row['step'] for row in resumed[1]] == [1, 2, 3, 4]
    assert 'l1' in straight[1][0] and 'nll_bits' in straight[1][-1]
    assert resumed[1] == straight[1]
    for key, value in straight[0].items():
        assert torch.equal(value, resumed[0][key]), key
    assert bool(straight[0]['flowUpsamplerNet.layers.1.actnorm.initialized'])


def test_group_train_ctflow_writes_weights_card_and_log(paired_dataset, tmp_path):
    output = tmp_path / 'out'
    code = run_command(
        [
            str(paired_dataset),
            str(output),
            'group',
            '--train',
            'ctflow',
            '--steps',
            '3',
            '--train-patch-size',
            '16',
            '--ctflow-batch',
            '2',
            '-w',
            str(tmp_path / 'work'),
            '--skip-bids-validation',
            '--nprocs',
            '1',
        ]
    )
    assert code == 0
    folder = output / 'models' / 'ctflow'
    card = json.loads((folder / 'ctflow.json').read_text())
    assert card['sha256'] == sha256_of(folder / 'ctflow.pt')
    assert card['architecture']['paper_parameters'] == 29_172_817
    trained = card['trained']
    assert trained['ReferenceRec'] == 'standard100' and trained['SourceRecs'] == ['sharp25']
    assert trained['Conditions'] == {
        'sharp25': {'ConvolutionKernel': 'simulated-sharp', 'KVP': 120},
        'standard100': {'ConvolutionKernel': 'simulated-standard', 'KVP': 120},
    }
    assert trained['SlicePairs'] == 2 and trained['Steps'] == 3
    assert trained['Parameters'] == 1_988_977
    log = (folder / 'training_log.tsv').read_text().splitlines()
    assert log[0] == 'step\tl1\tnll_bits' and len(log) == 4
    assert (folder / 'training_loss.png').stat().st_size > 1000
    state = torch.load(folder / 'ctflow.pt', weights_only=True)
    assert 'RRDB.RRDB_trunk.0.RDB1.conv1.weight' in state
