"""``--config-file``: a run's saved TOML repeats it; options on the command line override it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import run_cli
from mrctprep.cli.main import parse_command_line, run
from mrctprep.cli.run import build_config
from mrctprep.core.config import RunConfig


def _config(*argv: object) -> RunConfig:
    """The RunConfig that ``mrctprep *argv`` would run with."""
    return build_config(parse_command_line([str(arg) for arg in argv]), verbosity=0)


def _same_run(config: RunConfig, reference: RunConfig) -> RunConfig:
    """``config`` with the reference's run id (each run gets a new one)."""
    execution = dataclasses.replace(config.execution, run_uuid=reference.execution.run_uuid)
    return dataclasses.replace(config, execution=execution)


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / 'bids').mkdir()
    filters = tmp_path / 'filters.json'
    filters.write_text(json.dumps({'t1w': {'acquisition': 'mprage', 'run': None}}))
    plugin = tmp_path / 'plugin.yml'
    plugin.write_text('plugin: Linear\nplugin_args: {stop_on_first_crash: true}\n')
    return tmp_path


def test_the_saved_toml_gives_back_the_same_configuration(dataset):
    bids, out = dataset / 'bids', dataset / 'out'
    original = _config(
        bids, out, 'participant', '-w', dataset / 'work',
        '--participant-label', 'sub-01', '02', '--session-label', 'ses-a',
        '--bids-filter-file', dataset / 'filters.json', '--use-plugin', dataset / 'plugin.yml',
        '--nprocs', '3', '--mem', '6G', '--device', 'cpu', '--pipelines', 'reorient', 'drr',
        '--skull-strip', 'deepbet', '--drr-angles', '0,0;10,-5', '--drr-sdd', '900',
        '--drr-kvp', '60', '--superres-voxel-size', '0.8', '--superres-interleaved',
        '--weights', f'iguane={dataset / "w.pt"}', '--random-seed', '7', '--write-graph',
    )  # fmt: skip
    saved = dataset / 'mrctprep.toml'
    saved.write_text(original.to_toml())

    repeated = _config(bids, out, 'participant', '--config-file', saved)
    assert repeated.execution.run_uuid != original.execution.run_uuid
    assert _same_run(repeated, original) == original
    # the settings that were derived from files and options travel as their results
    assert repeated.inputs.bids_filters == {'t1w': {'acquisition': 'mprage', 'run': None}}
    assert (repeated.execution.plugin, repeated.execution.plugin_args) == (
        'Linear',
        {'stop_on_first_crash': True},
    )
    assert repeated.execution.omp_nthreads == 2 and repeated.execution.mem_gb == 6.0


def test_options_on_the_command_line_override_the_file(dataset):
    bids, out = dataset / 'bids', dataset / 'out'
    original = _config(
        bids, out, 'participant', '-w', dataset / 'work', '--skull-strip', 'deepbet',
        '--drr-sdd', '900', '--participant-label', '01', '--device', 'cpu',
    )  # fmt: skip
    saved = dataset / 'mrctprep.toml'
    saved.write_text(original.to_toml())

    # --skull-strip hdbet is the parser's default: named on the command line, it still wins
    changed = _config(
        bids, dataset / 'other', 'group', '--config-file', saved, '--skull-strip', 'hdbet',
        '--drr-sid', '400', '--participant-label', '03', '--nprocs', '1',
    )  # fmt: skip
    assert changed.mr.skull_strip == 'hdbet'
    assert changed.drr.overrides() == {
        'preset': 'deepdrr',
        'source_to_detector_mm': 900.0,
        'source_to_isocentre_mm': 400.0,
    }
    assert changed.inputs.participant_label == ('03',)
    assert changed.inputs.output_dir == dataset / 'other'
    assert changed.inputs.analysis_level == 'group'
    # omp_nthreads was saved (1 from --nprocs 2), so it stays: not recomputed from --nprocs
    assert (changed.execution.nprocs, changed.execution.omp_nthreads) == (1, 1)
    assert changed.execution.work_dir == dataset / 'work'


def test_a_file_that_is_not_a_run_configuration_is_one_error_line(dataset, capsys):
    bad = dataset / 'bad.toml'
    for text, problem in [
        ('[mr]\nskull_strip = \n', 'Invalid value'),
        ('[mr]\nskul_strip = "none"\n', "unknown setting 'skul_strip' in [mr]"),
        ('[brain]\nx = 1\n', 'unknown table [brain]'),
    ]:
        bad.write_text(text)
        args = [dataset / 'bids', dataset / 'out', 'participant', '--config-file', bad]
        assert run([str(arg) for arg in args]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f'mrctprep: error: {bad}: not a run configuration (')
        assert problem in line


def test_a_partial_file_sets_only_what_it_names(dataset):
    partial = dataset / 'partial.toml'
    partial.write_text('[mr]\nskull_strip = "none"\n\n[superres]\nvoxel_size = 0.5\n')
    config = _config(dataset / 'bids', dataset / 'out', 'participant', '--config-file', partial)
    default = _config(dataset / 'bids', dataset / 'out', 'participant')
    assert (config.mr.skull_strip, config.superres.voxel_size) == ('none', 0.5)
    assert _same_run(config, default).inputs == default.inputs
    assert _same_run(config, default).execution == default.execution


def test_a_real_run_is_repeated_from_the_toml_in_its_log(mini_bids, tmp_path):
    """The file a run leaves in each subject's log folder, through the command line."""
    first = run_cli(
        mini_bids, tmp_path / 'out', 'participant', '-w', tmp_path / 'work', '--dry-run',
        '--pipelines', 'reorient', '--participant-label', '01', '--random-seed', '3',
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    (saved,) = (tmp_path / 'out').glob('sub-01/log/*/mrctprep.toml')
    second = run_cli(
        mini_bids, tmp_path / 'out', 'participant', '--config-file', saved, '--dry-run'
    )
    assert second.returncode == 0, second.stderr
    runs = sorted((tmp_path / 'work').glob('*/config.toml'))
    assert len(runs) == 2
    original, repeated = (RunConfig.from_toml(path.read_text()) for path in runs)
    assert repeated.execution.run_uuid != original.execution.run_uuid
    assert _same_run(repeated, original) == original
    assert original.execution.pipelines == ('reorient',) and original.execution.random_seed == 3
