"""mrctprep on a live SLURM cluster (.ci/slurm.sh starts a one-node one on localhost).

The cheapest pipeline with real outputs and a real failure: ``reorient`` on the demo's sub-01
T1w beside a sub-02 whose T1w is truncated, through nipype's SLURM and SLURMGraph
plugins, compared with MultiProc's run of the same dataset.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from conftest import make_read_only, run_cli, write_bids

needs_slurm = pytest.mark.skipif(
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
#: the options of docs/hpc.md's array command, exactly
ARRAY_OPTIONS = [
    '--cpus-per-task', '1', '--mem', '2G', '--time', '0:30:00',
    '--sbatch-args=--partition=cpu', '--run-args=--pipelines reorient',
]  # fmt: skip
HPC_DOCS = Path(__file__).resolve().parents[1] / 'docs' / 'hpc.md'


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
    """The run's closing lines, without times, the run's id, crash file names and the output
    folder (each run writes its own)."""
    lines = [line.split(' ', 1)[1] for line in stderr.splitlines() if re.match(r'\d\d:', line)]
    start = next(i for i, line in enumerate(lines) if 'node(s) failed' in line)
    return [
        re.sub(
            r'Report written: .*/', 'Report written: ', re.sub(r' \(crash file: .*\)$', '', line)
        )
        for line in lines[start:]
    ]


def _outputs(out: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(out)): p
        for p in out.rglob('*')
        if p.is_file() and '/log/' not in f'/{p.relative_to(out)}' and p.parts[-2] != 'logs'
    }


@needs_slurm
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


def _wait_for_job(job_id: str, timeout_s: float = 300) -> str:
    """The job's final state (squeue keeps ended jobs for the cluster's MinJobAge)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = subprocess.run(
            ['squeue', '-h', '-t', 'all', '-j', job_id, '-o', '%t'], capture_output=True, text=True
        ).stdout.strip()
        if state in ('CD', 'F', 'CA', 'TO', 'OOM', 'NF'):
            return state
        time.sleep(1)
    raise TimeoutError(f'job {job_id} still queued after {timeout_s} s')


@needs_slurm
def test_array_script_runs_every_participant_then_the_group_level(demo_bids, tmp_path):
    script = tmp_path / 'mrctprep_array.sh'
    out, work = tmp_path / 'out', tmp_path / 'work'
    # The command of docs/hpc.md, with the tests' paths.
    written = run_cli('slurm-array', demo_bids, out, '-w', work, '-o', script, *ARRAY_OPTIONS)
    assert written.returncode == 0, written.stderr
    text = script.read_text()
    assert 'participants=(01 02 03 04)' in text
    assert '#SBATCH --cpus-per-task=1\n#SBATCH --mem=2048M\n#SBATCH --time=0:30:00\n' in text
    started = time.monotonic()
    # The tasks run the installed command, as on a cluster: this Python's.
    path = f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'
    submitted = subprocess.run(
        ['bash', script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, 'PATH': path},
    )
    assert submitted.returncode == 0, submitted.stderr
    array, group = re.fullmatch(
        r'job array (\d+) \(4 participants\), then group job (\d+)\n', submitted.stdout
    ).groups()
    assert _wait_for_job(group) == 'CD', (work / 'slurm-logs').glob('*')
    print(f'array of 4 demo subjects + group job: {time.monotonic() - started:.1f} s')
    for task in range(4):
        log = (work / 'slurm-logs' / f'mrctprep-{array}_{task}.out').read_text()
        assert 'All 1 subject(s) finished' in log
        subject = f'sub-0{task + 1}'
        assert (work / subject).is_dir()
        for suffix in ('T1w', 'ct'):
            image = nb.load(out / subject / 'anat' / f'{subject}_desc-reorient_{suffix}.nii.gz')
            assert nb.aff2axcodes(image.affine) == ('R', 'A', 'S')
    for suffix in ('T1w', 'ct'):
        rows = (out / f'group_{suffix}.tsv').read_text().splitlines()
        assert [row.split('\t')[0] for row in rows[1:]] == [f'sub-0{n}' for n in range(1, 5)]


@needs_slurm
def test_model_nodes_ask_for_gpus_and_plain_nodes_do_not(demo_bids, tmp_path):
    """mr-preproc's jobs submitted held, read from nipype's submit script and the scheduler,
    then cancelled: mrctprep reports every cancelled job and exits 1."""
    plugin_file = tmp_path / 'slurm.yml'
    plugin_file.write_text(
        PLUGIN_FILES['SLURMGraph'].replace('--time=1:00:00', '--time=1:00:00 --hold')
    )
    args = [demo_bids, tmp_path / 'out', 'participant', '-w', tmp_path / 'work']
    command = [sys.executable, '-m', 'mrctprep', *map(str, args), '--use-plugin', plugin_file]
    command += ['--participant-label', '01', '--pipelines', 'mr-preproc', '--omp-nthreads', '2']
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    jobs = _held_jobs(timeout_s=120)
    submit_script = next((tmp_path / 'work').glob('*/batch/submit_jobs.sh')).read_text()
    lines = {
        line.split('=', 1)[0]: line for line in submit_script.splitlines() if '$(sbatch' in line
    }
    skull_strip = next(line for name, line in lines.items() if name.endswith('_skull_strip'))
    n4 = next(line for name, line in lines.items() if name.endswith('_n4'))
    print(f'model node: {skull_strip}\nplain node: {n4}')
    assert '--cpus-per-task=2 --mem=3584M ' in skull_strip  # 3 GB + the job's 0.5 GB
    assert '--partition=gpu --gres=gpu:1' in skull_strip and '--partition=cpu' not in skull_strip
    assert '--cpus-per-task=2 --mem=2048M ' in n4 and '--partition=cpu' in n4
    assert 'gres' not in n4
    details = {name: _job_details(job_id) for job_id, name in jobs.items()}
    assert sum('TresPerNode=gres:gpu:1' in d for d in details.values()) == 1
    assert 'Partition=gpu' in details[skull_strip.split('=', 1)[0]]
    assert 'Partition=cpu' in details[n4.split('=', 1)[0]]
    # The model nodes run where the GPU is: their device is not looked for on this GPU-less host.
    settings = next((tmp_path / 'out' / 'sub-01' / 'log').glob('*/mrctprep.toml')).read_text()
    assert 'device = "cuda"' in settings.splitlines()
    subprocess.run(['scancel', *jobs], check=True)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 1, stderr
    assert 'no usable CUDA GPU' not in stderr
    cancelled = [
        line for line in stderr.splitlines() if re.search(r'SLURM job \d+ .* ended CA', line)
    ]
    assert len(cancelled) == len(jobs) and 'All 1 subject(s) finished' not in stderr


@needs_slurm
def test_rerun_after_scancel_computes_only_what_did_not_finish(mixed_bids, tmp_path):
    """SLURMGraph's jobs submitted held; the first step released and finished, the others
    cancelled; the rerun with the same -w (through the SLURM plugin, which checks the cache
    before submitting) reuses that step and finishes the subject."""
    held = tmp_path / 'held.yml'
    held.write_text(PLUGIN_FILES['SLURMGraph'].replace('--time=1:00:00', '--time=1:00:00 --hold'))
    args = [mixed_bids, tmp_path / 'out', 'participant', '-w', tmp_path / 'work']
    args += ['--participant-label', '01', '--pipelines', 'reorient', '--use-plugin']
    command = [sys.executable, '-m', 'mrctprep', *map(str, args)]
    run = subprocess.Popen([*command, str(held)], stderr=subprocess.PIPE, text=True)
    jobs = _held_jobs(timeout_s=120)
    first = next(i for i, name in jobs.items() if re.fullmatch(r'j\d+_reorient', name))
    subprocess.run(['scontrol', 'release', first], check=True)
    assert _wait_for_job(first) == 'CD'
    subprocess.run(['scancel', *(set(jobs) - {first})], check=True)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 1 and stderr.count(' ended CA ') == len(jobs) - 1, stderr
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / 'work').rglob('result_*.pklz')}
    assert [p.name for p in finished] == ['result_reorient.pklz']

    plugin_file = tmp_path / 'slurm.yml'
    plugin_file.write_text(PLUGIN_FILES['SLURM'])
    rerun = run_cli(*args, plugin_file)
    assert rerun.returncode == 0, rerun.stderr
    assert 'All 1 subject(s) finished' in rerun.stderr
    for result_file, mtime in finished.items():
        assert result_file.stat().st_mtime_ns == mtime, f'{result_file} was recomputed'
    assert len(list((tmp_path / 'work').rglob('result_*.pklz'))) == 4
    anat = tmp_path / 'out' / 'sub-01' / 'anat'
    assert nb.aff2axcodes(nb.load(anat / 'sub-01_desc-reorient_T1w.nii.gz').affine) == (
        'R', 'A', 'S'
    )  # fmt: skip


@needs_slurm
def test_jobs_that_sbatch_refuses_fail_the_run(mixed_bids, tmp_path):
    plugin_file = tmp_path / 'typo.yml'
    plugin_file.write_text(
        PLUGIN_FILES['SLURMGraph'].replace('--partition=cpu', '--partition=cpus')
    )
    args = [mixed_bids, tmp_path / 'out', 'participant', '-w', tmp_path / 'work']
    result = run_cli(*args, '--participant-label', '01', '--pipelines', 'reorient',
                     '--use-plugin', plugin_file)  # fmt: skip
    assert result.returncode == 1
    assert re.search(
        r'ERROR +sbatch accepted 0 of the 4 jobs: run `bash .*/submit_jobs.sh`', result.stderr
    )
    assert 'finished' not in result.stderr


def _held_jobs(timeout_s: float) -> dict[str, str]:
    """``{id: name}`` of the mrctprep run's held jobs, once it has submitted them all."""
    deadline, previous = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ['squeue', '-h', '-t', 'PD', '-o', '%i|%j|%k'], capture_output=True, text=True
        ).stdout.splitlines()
        jobs = {i: name for i, name, comment in (row.split('|') for row in listed)
                if comment.startswith('mrctprep:')}  # fmt: skip
        if jobs and jobs == previous:
            return jobs
        previous = jobs
        time.sleep(2)
    raise TimeoutError('mrctprep submitted no held jobs')


def _job_details(job_id: str) -> str:
    return subprocess.run(
        ['scontrol', 'show', 'job', job_id], capture_output=True, text=True, check=True
    ).stdout


def test_docs_show_the_tested_plugin_file_and_array_command():
    docs = HPC_DOCS.read_text()
    assert f'```yaml\n{PLUGIN_FILES["SLURM"]}```' in docs
    assert shlex.join(ARRAY_OPTIONS) in docs


def test_array_script_runs_the_container_with_the_folders_at_their_own_paths(tmp_path):
    bids = write_bids(tmp_path / 'bids', {'sub-01/anat/sub-01_T1w.nii.gz': b''}, ['01'])
    image = tmp_path / 'mrctprep-0.1.0.sif'
    args = [bids, tmp_path / 'out', '-w', tmp_path / 'work', '--container', image]
    written = run_cli('slurm-array', *args, *ARRAY_OPTIONS)
    assert written.returncode == 0, written.stderr
    line = next(x for x in written.stdout.splitlines() if x.startswith('mrctprep=('))
    shown = {bids: '/data/bids', tmp_path / 'out': '/data/out', tmp_path / 'work': '/scratch/work'}
    for path, doc_path in {**shown, image.parent: '/images'}.items():
        line = line.replace(str(path), doc_path)
    assert line in HPC_DOCS.read_text().splitlines()
    assert f'participant --participant-label "$label" -w {tmp_path}/work/sub-"$label"' in (
        written.stdout
    )
    on_gpus = run_cli('slurm-array', *args, '--sbatch-args=--gres=gpu:1')
    assert f'mrctprep=(singularity run --cleanenv --nv -B {bids}:{bids}:ro ' in on_gpus.stdout
