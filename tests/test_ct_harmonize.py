"""The ct-harmonize pipeline: CTFlow weights applied to every CT of a dataset, with their
sidecars, uncertainty map and figure; missing weights stop the run in one line."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import torch

from conftest import SHARED_DATA, run_cli, write_bids
from mrctprep.models.ctflow import CPU_SIZE, WINDOW_HU, CTFlow
from mrctprep.models.weights import WEIGHTS_DIR_ENV, save_weights, sha256_of

CT = SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz'


def _weights(folder):
    torch.manual_seed(0)
    trained = {'SizeParameters': CPU_SIZE.as_dict(), 'ReferenceRec': 'standard100'}
    state = CTFlow(CPU_SIZE).state_dict()
    return save_weights(
        state, folder / 'ctflow.pt', name='ctflow', provenance={'trained': trained}
    )


def test_ct_harmonize_writes_the_harmonized_ct_its_sd_and_figure(tmp_path):
    condition = {'ConvolutionKernel': 'B70f', 'KVP': 120, 'Exposure': 50}
    sidecar_bytes = json.dumps(condition | {'Modality': 'CT'}).encode()
    files = {
        'sub-01/anat/sub-01_rec-sharp25_ct.nii.gz': CT,
        'sub-01/anat/sub-01_rec-sharp25_ct.json': sidecar_bytes,
    }
    bids = write_bids(tmp_path / 'bids', files, ['01'])
    out, env = tmp_path / 'out', {'XDG_CACHE_HOME': str(tmp_path / 'cache'), WEIGHTS_DIR_ENV: ''}
    args = [bids, out, 'participant', '-w', tmp_path / 'work', '--pipelines', 'ct-harmonize']
    missing = run_cli(*args, '--skip-bids-validation', env=env)
    assert missing.returncode == 126, missing.stderr
    errors = [line for line in missing.stderr.splitlines() if line.startswith('mrctprep: error')]
    assert len(errors) == 1 and 'ctflow' in errors[0] and '--train ctflow' in errors[0]

    weights = _weights(tmp_path)
    result = run_cli(
        *args, '--skip-bids-validation', '--weights', f'ctflow={weights.path}',
        '--ctflow-samples', '2', '--ctflow-tau', '0.8', '--nprocs', '1', env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    anat = out / 'sub-01' / 'anat'
    stem = 'sub-01_rec-sharp25_desc-harmonized'
    harmonized = nb.load(anat / f'{stem}_ct.nii.gz')
    std = nb.load(anat / f'{stem}std_ct.nii.gz')
    source = nb.load(CT)
    assert harmonized.get_data_dtype() == np.int16 and std.get_data_dtype() == np.float32
    assert harmonized.shape == std.shape == source.shape
    conformed = nb.as_closest_canonical(source)
    assert np.allclose(harmonized.affine, conformed.affine)
    hu = np.asanyarray(conformed.dataobj, dtype=np.float32)
    values = np.asanyarray(harmonized.dataobj)
    spread = np.asanyarray(std.dataobj)
    # bone and metal above the window, and air below it, keep the input's HU: no SD there
    outside = (hu > WINDOW_HU[1]) | (hu < WINDOW_HU[0])
    assert outside.any() and np.array_equal(values[outside], np.rint(hu[outside]))
    assert (spread[outside] == 0).all() and spread[~outside].max() > 0
    sidecar = json.loads((anat / f'{stem}_ct.json').read_text())
    assert sidecar['ModelWeightsSHA256'] == weights.sha256 == sha256_of(weights.path)
    assert sidecar['SourceCondition'] == 'rec-sharp25'
    assert sidecar['ReferenceCondition'] == 'rec-standard100'
    assert sidecar['SourceAcquisition'] == condition
    assert (sidecar['Temperature'], sidecar['Samples'], sidecar['RandomSeed']) == (0.8, 2, 0)
    figure = out / 'sub-01' / 'figures' / 'sub-01_rec-sharp25_desc-ctharmonize_ct.svg'
    assert figure.stat().st_size > 10_000
