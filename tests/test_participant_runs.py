"""Participant runs through the real command line: outputs, failures, resumption, inputs."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from conftest import SHARED_DATA, make_read_only, run_cli, write_bids


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob('*'))
        if path.is_file()
    }


@pytest.fixture(scope='module')
def mini_run(mini_bids, tmp_path_factory):
    """One participant run over the mini dataset (read-only input), shared by the checks."""
    root = tmp_path_factory.mktemp('mini_run')
    before = _tree_digest(mini_bids)
    result = run_cli(
        mini_bids,
        root / 'out',
        'participant',
        '-w',
        root / 'work',
        '--nprocs',
        '2',
        '--omp-nthreads',
        '1',
        '--pipelines',
        'reorient',
    )
    return result, root / 'out', root / 'work', before


def test_run_succeeds_and_leaves_the_input_untouched(mini_run, mini_bids):
    result, _, work, before = mini_run
    assert result.returncode == 0, result.stderr
    assert _tree_digest(mini_bids) == before
    assert list(work.glob('*/bids_db/*.sqlite')), 'the pybids index belongs in the work dir'


def test_outputs_are_the_reoriented_images_with_sidecars(mini_run, mini_bids):
    _, out, _, _ = mini_run
    written = sorted(str(p.relative_to(out)) for p in out.glob('sub-*/**/anat/*'))
    assert written == sorted(
        [
            'sub-01/anat/sub-01_desc-reorient_PDw.json',
            'sub-01/anat/sub-01_desc-reorient_PDw.nii.gz',
            'sub-01/anat/sub-01_desc-reorient_T1w.json',
            'sub-01/anat/sub-01_desc-reorient_T1w.nii.gz',
            'sub-02/anat/sub-02_desc-reorient_ct.json',
            'sub-02/anat/sub-02_desc-reorient_ct.nii.gz',
            'sub-03/ses-1/anat/sub-03_ses-1_desc-reorient_T1w.json',
            'sub-03/ses-1/anat/sub-03_ses-1_desc-reorient_T1w.nii.gz',
            'sub-03/ses-2/anat/sub-03_ses-2_run-1_desc-reorient_T1w.json',
            'sub-03/ses-2/anat/sub-03_ses-2_run-1_desc-reorient_T1w.nii.gz',
        ]
    )
    ct_out = nb.load(out / 'sub-02/anat/sub-02_desc-reorient_ct.nii.gz')
    ct_in = nb.load(mini_bids / 'sub-02/anat/sub-02_ct.nii.gz')
    assert nb.aff2axcodes(ct_out.affine) == ('R', 'A', 'S')
    np.testing.assert_array_equal(ct_out.get_fdata(), ct_in.get_fdata())  # RAS already
    assert ct_out.get_data_dtype() == ct_in.get_data_dtype()

    sidecar = json.loads((out / 'sub-01/anat/sub-01_desc-reorient_PDw.json').read_text())
    assert sidecar['Sources'] == ['bids:raw:sub-01/anat/sub-01_PDw.nii.gz']
    assert sidecar['SkullStripped'] is False
    assert sidecar['OriginalShape'] == [191, 256, 54]
    assert sidecar['Software']['mrctprep'].startswith('0.')
    assert 'nibabel' in sidecar['Software'] and 'nipype' in sidecar['Software']
    pd_out = nb.load(out / 'sub-01/anat/sub-01_desc-reorient_PDw.nii.gz')
    np.testing.assert_allclose(pd_out.affine, nb.load(SHARED_DATA / 'mr/chris_pd.nii.gz').affine)


def test_figures_logs_and_dataset_files(mini_run, mini_bids):
    _, out, _, _ = mini_run
    figures = sorted(p.name for p in out.glob('sub-*/figures/*.svg'))
    assert figures == sorted(
        [
            'sub-01_desc-reorient_PDw.svg',
            'sub-01_desc-reorient_T1w.svg',
            'sub-02_desc-reorient_ct.svg',
            'sub-03_ses-1_desc-reorient_T1w.svg',
            'sub-03_ses-2_run-1_desc-reorient_T1w.svg',
        ]
    )
    assert '<svg' in (out / 'sub-02/figures/sub-02_desc-reorient_ct.svg').read_text()
    description = json.loads((out / 'dataset_description.json').read_text())
    assert description['DatasetType'] == 'derivative'
    assert description['SourceDatasets'][0]['URL'] == mini_bids.as_uri()
    assert 'figures/' in (out / '.bidsignore').read_text().split()
    descriptions = (out / 'descriptions.tsv').read_text()
    assert descriptions.startswith('desc_id\tdescription\n') and '\nreorient\t' in descriptions
    configs = list(out.glob('sub-01/log/*/mrctprep.toml'))
    assert len(configs) == 1 and 'analysis_level = "participant"' in configs[0].read_text()
    assert not list(out.rglob('.tmp-*')), 'no temporary files may remain'


def test_filters_and_session_labels_select_inputs(mini_bids, tmp_path):
    filters = tmp_path / 'filters.json'
    filters.write_text(json.dumps({'t1w': {'run': None}}))
    result = run_cli(
        mini_bids,
        tmp_path / 'out',
        'participant',
        '-w',
        tmp_path / 'work',
        '--participant-label',
        'sub-03',
        '--session-label',
        '2',
        '1',
        '--bids-filter-file',
        filters,
        '--dry-run',
        '--write-graph',
        '--pipelines',
        'reorient',
    )
    assert result.returncode == 0, result.stderr
    dot = next((tmp_path / 'out' / 'logs').glob('*/workflow_graph.dot')).read_text()
    assert 'sub_03_ses_1_wf' in dot and 'sub_01_wf' not in dot
    assert 'sub-03_ses-2: skipping pipeline reorient: no input' in result.stderr


def test_a_truncated_image_fails_its_subject_only(tmp_path):
    truncated = (SHARED_DATA / 'mr' / 'colin27_t1_head.nii.gz').read_bytes()[:300_000]
    bids = write_bids(
        tmp_path / 'bids',
        {
            'sub-01/anat/sub-01_T1w.nii.gz': SHARED_DATA / 'mr' / 't1_head_2mm.nii.gz',
            'sub-02/anat/sub-02_T1w.nii.gz': truncated,
            'sub-03/anat/sub-03_ct.nii.gz': SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz',
        },
        participants=['01', '02', '03'],
    )
    make_read_only(bids)
    result = run_cli(
        bids, tmp_path / 'out', 'participant', '-w', tmp_path / 'work', '--pipelines', 'reorient'
    )
    assert result.returncode == 1
    failure_lines = [line for line in result.stderr.splitlines() if 'crash file:' in line]
    assert len(failure_lines) == 1
    line = failure_lines[0]
    assert 'sub-02 reorient_wf.reorient_T1w_wf.reorient failed' in line
    assert 'sub-02/anat/sub-02_T1w.nii.gz: cannot read image (the file is truncated' in line
    crash_file = Path(line.rsplit('crash file: ', 1)[1].rstrip(')'))
    assert crash_file.is_file() and crash_file.parts[-4] == 'sub-02'
    assert 'Subjects that finished: sub-01, sub-03' in result.stderr
    for done in (
        'sub-01/anat/sub-01_desc-reorient_T1w.nii.gz',
        'sub-03/anat/sub-03_desc-reorient_ct.nii.gz',
        'sub-03/figures/sub-03_desc-reorient_ct.svg',
    ):
        assert (tmp_path / 'out' / done).is_file()
    assert not list((tmp_path / 'out').glob('sub-02/anat/*'))
    assert 'Traceback' not in result.stderr


def test_killed_run_resumes_without_recomputing_finished_nodes(mini_bids, tmp_path):
    """SIGKILL a sequential run after its first node, rerun with the same -w."""
    plugin = tmp_path / 'linear.yml'
    plugin.write_text('plugin: Linear\nplugin_args: {}\n')
    args = [
        sys.executable,
        '-m',
        'mrctprep',
        str(mini_bids),
        str(tmp_path / 'out'),
        'participant',
        '-w',
        str(tmp_path / 'work'),
        '--use-plugin',
        str(plugin),
        '--pipelines',
        'reorient',
    ]
    results = tmp_path / 'work' / 'mrctprep_0_1_wf'
    process = subprocess.Popen(
        args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list(results.glob('**/result_reorient.pklz')) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in results.glob('**/result_*.pklz')}
    assert finished, 'the first run should have finished at least one node'
    outputs_before = sorted(
        str(p.relative_to(tmp_path)) for p in (tmp_path / 'out').rglob('*.nii.gz')
    )
    assert len(outputs_before) < 5, 'the run was killed before it finished'

    resumed = run_cli(
        mini_bids,
        tmp_path / 'out',
        'participant',
        '-w',
        tmp_path / 'work',
        '-v',
        '--pipelines',
        'reorient',
    )
    assert resumed.returncode == 0, resumed.stderr
    for result_file, mtime in finished.items():
        assert result_file.stat().st_mtime_ns == mtime, f'{result_file} was recomputed'
    assert 'Cached' in resumed.stderr
    assert len(list((tmp_path / 'out').glob('sub-*/**/anat/*.nii.gz'))) == 5
    assert len(list(results.glob('**/result_*.pklz'))) > len(finished)


def test_group_level_tabulates_participant_outputs(mini_run, mini_bids, tmp_path):
    _, out, work, _ = mini_run
    result = run_cli(mini_bids, out, 'group', '-w', work)
    assert result.returncode == 0, result.stderr
    with open(out / 'group_T1w.tsv') as table:
        t1w = list(csv.DictReader(table, delimiter='\t'))
    assert [(r['participant_id'], r['session_id'], r['desc']) for r in t1w] == [
        ('sub-01', 'n/a', 'reorient'),
        ('sub-03', 'ses-1', 'reorient'),
        ('sub-03', 'ses-2', 'reorient'),
    ]
    assert (t1w[0]['original_shape'], t1w[0]['voxel_size_mm']) == ('83x105x80', '2x2x2')
    with open(out / 'group_ct.tsv') as table:
        ct = list(csv.DictReader(table, delimiter='\t'))
    assert len(ct) == 1 and (ct[0]['original_shape'], ct[0]['voxel_size_mm']) == (
        '122x101x30',
        '3x3x3',
    )

    empty = run_cli(mini_bids, tmp_path / 'nothing', 'group', '-w', tmp_path / 'w')
    assert empty.returncode == 2
    assert 'run the participant level first' in empty.stderr
