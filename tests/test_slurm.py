"""mrctprep on a live SLURM cluster (.ci/slurm.sh starts a one-node one on localhost).

The cheapest pipeline with real outputs and a real failure: ``reorient`` on the demo's sub-01
T1w beside a sub-02 whose T1w is truncated, through nipype's SLURM and SLURMGraph
plugins, compared with MultiProc's run of the same dataset.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from conftest import make_read_only, run_cli, write_bids

pytestmark = pytest.mark.skipif(
    shutil.which('sbatch') is None,
    reason='needs a SLURM cluster and sbatch is not installed (.ci/slurm.sh start brings one up)',
)

PLUGIN_FILES = {
    # The plugin file of docs/hpc.md, exactly.
    'SLURM': """\
plugin: SLURM
plugin_args:
  sbatch_args: --partition=cpu --time=1:00:00
  model_sbatch_args: --partition=gpu --gres=gpu:1 --time=1:00:00
""",
}
PLUGIN_FILES['SLURMGraph'] = PLUGIN_FILES['SLURM'].replace('SLURM\n', 'SLURMGraph\n', 1)


@pytest.fixture(scope='module')
def mixed_bids(demo_bids, tmp_path_factory) -> Path:
    """The demo's sub-01, and a sub-02 whose T1w was cut short in transfer."""
    t1w = (demo_bids / 'sub-02/anat/sub-02_T1w.nii.gz').read_bytes()
    root = write_bids(
        tmp_path_factory.mktemp('slurm') / 'bids',
        {
            'sub-01/anat/sub-01_T1w.nii.gz': demo_bids / 'sub-01/anat/sub-01_T1w.nii.gz',
            'sub-02/anat/sub-02_T1w.nii.gz': t1w[: len(t1w) // 3],
        },
        participants=['01', '02'],
    )
    make_read_only(root)
    return root


def _run(bids: Path, root: Path, plugin: str) -> subprocess.CompletedProcess:
    args: list[str | Path] = [bids, root / 'out', 'participant', '-w', root / 'work']
    if plugin != 'MultiProc':
        plugin_file = root / f'{plugin}.yml'
        plugin_file.write_text(PLUGIN_FILES[plugin])
        args += ['--use-plugin', plugin_file]
    started = time.monotonic()
    result = run_cli(*args, '--pipelines', 'reorient', '--nprocs', '2')
    print(f'{plugin}: one subject + one failing, reorient: {time.monotonic() - started:.1f} s')
    return result


@pytest.fixture(scope='module')
def multiproc_run(mixed_bids, tmp_path_factory):
    root = tmp_path_factory.mktemp('multiproc')
    return _run(mixed_bids, root, 'MultiProc'), root / 'out'


def _summary(stderr: str) -> list[str]:
    """The run's closing lines, without times, the run's id and crash file names."""
    lines = [line.split(' ', 1)[1] for line in stderr.splitlines() if re.match(r'\d\d:', line)]
    start = next(i for i, line in enumerate(lines) if 'node(s) failed' in line)
    return [re.sub(r' \(crash file: .*\)$', '', line) for line in lines[start:]]


def _outputs(out: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(out)): p
        for p in out.rglob('*')
        if p.is_file() and '/log/' not in f'/{p.relative_to(out)}' and p.parts[-2] != 'logs'
    }


@pytest.mark.parametrize('plugin', ['SLURM', 'SLURMGraph'])
def test_plugin_run_equals_multiproc_and_names_the_real_error(
    plugin, mixed_bids, multiproc_run, tmp_path
):
    reference, reference_out = multiproc_run
    result = _run(mixed_bids, tmp_path, plugin)
    assert (result.returncode, reference.returncode) == (1, 1), result.stderr
    summary = _summary(result.stderr)
    print('\n'.join(summary))
    assert summary == _summary(reference.stderr)
    assert summary[1].startswith('ERROR     sub-02 reorient_wf.reorient_T1w_wf.reorient failed: ')
    assert 'sub-02_T1w.nii.gz: cannot read image (the file is truncated' in summary[1]
    crash_line = next(line for line in result.stderr.splitlines() if 'crash file:' in line)
    crash_file = Path(crash_line.rsplit('crash file: ', 1)[1].rstrip(')'))
    assert crash_file.parts[-4] == 'sub-02' and 'the file is truncated' in crash_file.read_text()
    outputs, expected = _outputs(tmp_path / 'out'), _outputs(reference_out)
    assert sorted(outputs) == sorted(expected)
    assert 'sub-01/anat/sub-01_desc-reorient_T1w.nii.gz' in outputs
    for name, path in outputs.items():
        if name.endswith('.nii.gz'):
            np.testing.assert_array_equal(
                nb.load(path).get_fdata(), nb.load(expected[name]).get_fdata()
            )
            np.testing.assert_array_equal(nb.load(path).affine, nb.load(expected[name]).affine)
        elif name.endswith('.json'):
            assert path.read_text() == expected[name].read_text(), name
