"""The command line: options, and one clear line plus the right exit code for bad input."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA, run_cli, write_bids
from mrctprep.cli.main import build_parser, run, with_subcommand
from mrctprep.cli.option_types import parse_memory_gb
from mrctprep.cli.run import build_config
from mrctprep.core.config import RunConfig
from mrctprep.workflows.pipelines import PIPELINES


def _one_error_line(result) -> str:
    """The error output of a refused run: exactly one line, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 'Traceback' not in result.stderr
    errors = [line for line in lines if 'error' in line.lower()]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize(
    ('text', 'gigabytes'),
    [
        ('16G', 16.0),
        ('16GB', 16.0),
        ('8000M', 7.8125),
        ('8000MB', 7.8125),
        ('2048', 2.0),
        ('1T', 1024.0),
        ('512k', 512 / 1024**2),
    ],
)
def test_memory_units(text, gigabytes):
    assert parse_memory_gb(text) == pytest.approx(gigabytes)


def test_options_parse_to_their_meaning(tmp_path):
    opts = build_parser().parse_args(
        with_subcommand(
            [
                str(tmp_path),
                str(tmp_path / 'out'),
                'participant',
                '--participant_label',
                'sub-01',
                '02',
                '--n_cpus',
                '3',
                '--omp-nthreads',
                '2',
                '--mem-mb',
                '4G',
                '--device',
                'cuda:1',
                '--skip_bids_validator',
                '--pipelines',
                'reorient',
                '-vv',
            ]
        )
    )
    assert opts.participant_label == ['sub-01', '02']
    assert (opts.nprocs, opts.omp_nthreads, opts.mem_gb) == (3, 2, 4.0)
    assert opts.device == 'cuda:1' and opts.skip_bids_validation and opts.verbose == 2


@pytest.mark.parametrize(
    'bad',
    [
        ['--nprocs', '0'],
        ['--device', 'gpu'],
        ['--mem', 'lots'],
        ['--pipelines', 'nope'],
        ['--no-such-option'],
    ],
)
def test_bad_options_exit_2(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run([str(tmp_path), str(tmp_path / 'out'), 'participant', *bad])
    assert exit_info.value.code == 2
    assert 'error:' in capsys.readouterr().err


def test_version_and_pipeline_list():
    assert run_cli('--version').stdout.strip().startswith('mrctprep 0.')
    listing = run_cli('--list-pipelines')
    assert listing.returncode == 0
    for name, pipeline in PIPELINES.items():
        line = next(li for li in listing.stdout.splitlines() if li.startswith(name))
        assert all(query in line for query in pipeline.inputs)


def test_missing_bids_dir(tmp_path):
    result = run_cli(tmp_path / 'absent', tmp_path / 'out', 'participant')
    assert result.returncode == 2
    assert 'absent does not exist' in _one_error_line(result)


def test_no_dataset_description(tmp_path):
    (tmp_path / 'bids' / 'sub-01' / 'anat').mkdir(parents=True)
    result = run_cli(tmp_path / 'bids', tmp_path / 'out', 'participant', '-w', tmp_path / 'w')
    assert result.returncode == 2
    assert 'dataset_description.json not found' in _one_error_line(result)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize(
    ('output', 'work', 'message'),
    [
        ('.', 'w', 'must differ'),
        ('out', 'w', 'lies inside BIDS_DIR'),
        ('../out', 'w', 'work directory'),
    ],
)
def test_outputs_inside_input_are_refused(mini_bids, tmp_path, output, work, message):
    work_dir = mini_bids / work if message == 'work directory' else tmp_path / work
    result = run_cli(mini_bids, mini_bids / output, 'participant', '-w', work_dir)
    assert result.returncode == 2
    assert message in _one_error_line(result)


def test_unknown_participants_are_named_with_those_found(mini_bids, tmp_path):
    result = run_cli(
        mini_bids,
        tmp_path / 'out',
        'participant',
        '-w',
        tmp_path / 'w',
        '--participant-label',
        '01',
        'sub-07',
        '99',
    )
    assert result.returncode == 2
    line = _one_error_line(result)
    assert 'sub-07, sub-99' in line and 'found: sub-01, sub-02, sub-03' in line
    assert 'sub-01,' not in line.split('found:')[0]


def test_verbose_errors_show_the_traceback(tmp_path):
    (tmp_path / 'bids').mkdir()
    result = run_cli(tmp_path / 'bids', tmp_path / 'out', 'participant', '-v')
    assert result.returncode == 2 and 'Traceback' in result.stderr


@pytest.mark.parametrize(
    ('content', 'message'),
    [
        ('{"t1w": {"acquisition": "fast"}, "bold": {}}', 'unknown query name(s) bold'),
        ('[1, 2]', 'maps query names'),
        ('{not json', 'cannot read the BIDS filter file'),
    ],
)
def test_bad_filter_files(mini_bids, tmp_path, content, message):
    filter_file = tmp_path / 'filter.json'
    filter_file.write_text(content)
    result = run_cli(
        mini_bids,
        tmp_path / 'out',
        'participant',
        '-w',
        tmp_path / 'w',
        '--bids-filter-file',
        filter_file,
    )
    assert result.returncode == 2
    assert message in _one_error_line(result)


def test_unknown_plugin_is_refused(mini_bids, tmp_path):
    plugin_file = tmp_path / 'plugin.yml'
    plugin_file.write_text('plugin: Slurmish\nplugin_args: {}\n')
    result = run_cli(
        mini_bids,
        tmp_path / 'out',
        'participant',
        '-w',
        tmp_path / 'w',
        '--use-plugin',
        plugin_file,
    )
    assert result.returncode == 2
    line = _one_error_line(result)
    assert "unknown nipype plugin 'Slurmish'" in line and 'SLURM' in line


def test_requested_gpu_that_is_absent_exits_126(mini_bids, tmp_path):
    torch = pytest.importorskip('torch')
    if torch.cuda.is_available():
        pytest.skip('a GPU is present; this checks the CPU-only refusal')
    result = run_cli(
        mini_bids, tmp_path / 'out', 'participant', '-w', tmp_path / 'w', '--device', 'cuda'
    )
    assert result.returncode == 126
    assert 'sees no usable CUDA GPU' in _one_error_line(result)


def test_a_subject_without_inputs_is_skipped_with_a_warning(tmp_path):
    bids = write_bids(
        tmp_path / 'bids',
        {
            'sub-01/anat/sub-01_T1w.nii.gz': SHARED_DATA / 'mr' / 't1_head_2mm.nii.gz',
            # valid BIDS (a sidecar alone would not be), but no input of the pipelines
            'sub-02/anat/sub-02_T2w.nii.gz': SHARED_DATA / 'mr' / 't1_head_2mm.nii.gz',
        },
        participants=['01', '02'],
    )
    result = run_cli(bids, tmp_path / 'out', 'participant', '-w', tmp_path / 'w', '--dry-run')
    assert result.returncode == 0, result.stderr
    assert 'sub-02: skipping pipeline mr-preproc: no input' in result.stderr
    assert 'sub-01: skipping pipeline ct-ingest: no input (needs any of: ct)' in result.stderr
    assert 'sub-01: mr-preproc' in result.stderr


def test_a_workflow_that_cannot_be_built_exits_70(mini_bids, tmp_path, monkeypatch, capsys):
    from mrctprep.workflows import reorient

    def broken_factory(**_):
        raise KeyError('template MNI152NLin2009aSym')

    monkeypatch.setattr(reorient, 'init_reorient_wf', broken_factory)
    code = run(
        [
            str(mini_bids),
            str(tmp_path / 'out'),
            'participant',
            '-w',
            str(tmp_path / 'w'),
            '--pipelines',
            'reorient',
        ]
    )
    assert code == 70
    assert "could not be built: KeyError('template MNI152NLin2009aSym')" in capsys.readouterr().err


@pytest.mark.parametrize('option', ['--help', '--list-pipelines'])
def test_help_and_pipeline_list_import_neither_nipype_nor_torch(option):
    result = subprocess.run(
        [sys.executable, '-X', 'importtime', '-m', 'mrctprep', option],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {
        line.split('|')[-1].strip().split('.')[0]
        for line in result.stderr.splitlines()
        if line.startswith('import time:')
    }
    assert 'mrctprep' in imported and 'argparse' in imported
    assert not {'nipype', 'torch'} & imported
    assert 'mr-preproc' in result.stdout


def test_the_configuration_is_frozen_and_round_trips_through_toml(tmp_path):
    (tmp_path / 'bids').mkdir()
    opts = build_parser().parse_args(
        with_subcommand(
            [
                str(tmp_path / 'bids'),
                str(tmp_path / 'out'),
                'group',
                '--device',
                'cpu',
                '--participant-label',
                'sub-01',
                '--drr-angles',
                '0,0;10,-5',
                '--drr-sdd',
                '900',
                '--weights',
                f'iguane={tmp_path / "w.pt"}',
                '--superres-voxel-size',
                '0.8',
            ]
        )
    )
    config = build_config(opts, verbosity=1)
    assert config.inputs.participant_label == ('01',)
    assert config.drr.overrides() == {
        'preset': 'deepdrr',
        'angles': ((0.0, 0.0), (10.0, -5.0)),
        'source_to_detector_mm': 900.0,
    }
    assert config.superres.voxel_size == 0.8 and config.execution.device == 'cpu'
    assert config.models.weights == {'iguane': str(tmp_path / 'w.pt')}
    assert RunConfig.from_toml(config.to_toml()) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.execution.device = 'cuda'  # type: ignore[misc]
    with pytest.raises(ValueError, match='must be resolved'):
        dataclasses.replace(config.execution, device='auto')


@pytest.mark.parametrize(
    ('method', 'hinted'), [('hdbet', True), ('deepbet', True), ('none', False)]
)
def test_a_node_error_gets_the_option_that_fixes_it(method, hinted):
    """Crash files end with ``module.Class: message``; the summary adds the option to use."""
    from mrctprep.cli.errors import describe_node_error
    from mrctprep.core.errors import ImplausibleBrainMaskError

    error = ImplausibleBrainMaskError(method, 12.0, (300.0, 2500.0))
    line = f'mrctprep.core.errors.ImplausibleBrainMaskError: {error}'
    described = describe_node_error(line)
    assert described.startswith(line)
    assert ('use --skull-strip none' in described) == hinted
    assert describe_node_error('ValueError: boom') == 'ValueError: boom'


def test_library_errors_carry_facts_and_the_command_line_adds_the_option(tmp_path):
    from mrctprep.cli.errors import EXIT_RESOURCE, describe_error, exit_code_of
    from mrctprep.core.errors import DeviceUnavailableError, WeightsNotFoundError

    given = WeightsNotFoundError('iguane', [tmp_path / 'w.pt'], given=Path('w.pt'))
    assert '--' not in str(given) and given.searched == [tmp_path / 'w.pt']
    assert describe_error(given).startswith('--weights iguane=w.pt: no weights file w.pt')
    device = DeviceUnavailableError('cuda:1', 'only 1 CUDA device(s) visible')
    assert str(device) == 'device cuda:1: only 1 CUDA device(s) visible'
    assert describe_error(device).startswith('--device cuda:1: only 1 CUDA device(s) visible')
    assert exit_code_of(given) == exit_code_of(device) == EXIT_RESOURCE
