"""Graph construction for every pipeline, the root workflow, drawing and the methods text."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from nipype.pipeline.engine.utils import generate_expanded_graph

from conftest import run_cli
from mrctprep.core.bids import SubjectData
from mrctprep.core.config import ExecutionOptions, InputOptions, ModelOptions, RunConfig
from mrctprep.models.ctflow import CPU_SIZE
from mrctprep.models.weights import save_weights
from mrctprep.workflows.base import SubjectPlan
from mrctprep.workflows.base import init_mrctprep_wf as _init_mrctprep_wf
from mrctprep.workflows.pipelines import PIPELINES, pipelines_to_build


def _config(tmp_path: Path, pipelines: list[str], weights: Path | None = None) -> RunConfig:
    return RunConfig(
        inputs=InputOptions(bids_dir=tmp_path / 'bids', output_dir=tmp_path / 'out'),
        execution=ExecutionOptions(work_dir=tmp_path / 'work', pipelines=tuple(pipelines)),
        models=ModelOptions(weights={'iguane': str(weights)} if weights else {}),
    )


def init_mrctprep_wf(*, subjects: list[SubjectData], config: RunConfig):
    """The root workflow for the pipelines of ``config`` that each subject has inputs for,
    planned as the command line plans them."""
    selected = config.execution.pipelines
    plan = [
        SubjectPlan(
            subject,
            tuple(
                pipelines_to_build([name for name in selected if PIPELINES[name].accepts(subject)])
            ),
        )
        for subject in subjects
    ]
    return _init_mrctprep_wf(plan=plan, config=config)


def _subject(tmp_path: Path, subject: str, session: str | None = None) -> SubjectData:
    prefix = f'sub-{subject}' + (f'_ses-{session}' if session else '')
    folder = tmp_path / 'bids' / f'sub-{subject}' / (f'ses-{session}' if session else '') / 'anat'
    files = {
        't1w': [folder / f'{prefix}_run-1_T1w.nii.gz', folder / f'{prefix}_run-2_T1w.nii.gz'],
        'flair': [folder / f'{prefix}_FLAIR.nii.gz'],
        'ct': [folder / f'{prefix}_ct.nii.gz'],
    }
    # Building a graph reads no image, but nipype checks that inputs exist.
    folder.mkdir(parents=True)
    for path in sum(files.values(), []):
        path.touch()
    return SubjectData(subject, session, {k: [str(p) for p in v] for k, v in files.items()})


@pytest.mark.parametrize('pipeline', sorted(PIPELINES))
def test_every_pipeline_builds_an_expandable_graph(tmp_path, pipeline):
    subjects = [_subject(tmp_path, '01'), _subject(tmp_path, '02', session='A')]
    weights = save_weights({}, tmp_path / 'iguane.pt', name='iguane', provenance={})
    config = _config(tmp_path, [pipeline], weights.path)  # mr-harmonize checks its weights first
    organ_weights = {  # so does organ-seg, both stages
        name: str(save_weights({}, tmp_path / f'{name}.pt', name=name, provenance={}).path)
        for name in ('efficientscn-localization', 'efficientscn-segmentation')
    }
    ctflow = save_weights(
        {}, tmp_path / 'ctflow.pt', name='ctflow',
        provenance={'trained': {'SizeParameters': CPU_SIZE.as_dict()}},
    )  # fmt: skip
    given = {**config.models.weights, **organ_weights, 'ctflow': str(ctflow.path)}
    config = dataclasses.replace(config, models=ModelOptions(weights=given))
    workflow = init_mrctprep_wf(subjects=subjects, config=config)
    expanded = generate_expanded_graph(workflow._create_flat_graph())
    names = {node.fullname for node in expanded.nodes()}
    assert workflow.name == 'mrctprep_0_1_wf'
    # MultiProc reads its polling interval from the root workflow's config only.
    assert float(workflow.config['execution']['poll_sleep_duration']) <= 0.2
    assert any(n.startswith('mrctprep_0_1_wf.sub_02_ses_A_wf.') for n in names)
    assert all(n.split('.')[1] in ('sub_01_wf', 'sub_02_ses_A_wf') for n in names)


def test_reorient_graph_has_one_branch_per_image_and_sinks_every_output(tmp_path):
    workflow = init_mrctprep_wf(
        subjects=[_subject(tmp_path, '01')], config=_config(tmp_path, ['reorient'])
    )
    flat = workflow._create_flat_graph()
    names = {node.fullname.removeprefix('mrctprep_0_1_wf.sub_01_wf.reorient_wf.') for node in flat}
    for image in ('run_1_T1w', 'run_2_T1w', 'FLAIR', 'ct'):
        for node in ('reorient', 'plot_reorient', 'ds_reorient', 'ds_report_reorient'):
            assert f'reorient_{image}_wf.{node}' in names
    edges = {(a.name, b.name) for a, b in flat.edges()}
    assert {
        ('reorient', 'ds_reorient'),
        ('reorient', 'plot_reorient'),
        ('plot_reorient', 'ds_report_reorient'),
    } <= edges
    crash_dirs = {node.config['execution']['crashdump_dir'] for node in flat}
    assert crash_dirs == {str(tmp_path / 'out' / 'sub-01' / 'log' / _config_run_uuid(flat))}
    ct_plot = next(n for n in flat if n.fullname.endswith('reorient_ct_wf.plot_reorient'))
    assert ct_plot.inputs.window == (40.0, 400.0)


def _config_run_uuid(flat) -> str:
    return Path(next(iter(flat)).config['execution']['crashdump_dir']).name


def test_dry_run_draws_the_graph_and_runs_nothing(mini_bids, tmp_path):
    result = run_cli(
        mini_bids,
        tmp_path / 'out',
        'participant',
        '-w',
        tmp_path / 'work',
        '--write-graph',
        '--dry-run',
        '--pipelines',
        'reorient',
    )
    assert result.returncode == 0, result.stderr
    dot_files = list((tmp_path / 'out' / 'logs').glob('*/workflow_graph.dot'))
    assert len(dot_files) == 1
    dot = dot_files[0].read_text()
    assert 'reorient_PDw_wf' in dot and 'sub_03_ses_2_wf' in dot
    if shutil.which('dot'):
        svg = dot_files[0].with_suffix('.svg').read_text()
        assert svg.lstrip().startswith(('<?xml', '<svg')) and 'ds_reorient' in svg
    assert not list((tmp_path / 'out').glob('sub-*/anat/*'))
    assert not list((tmp_path / 'work').glob('mrctprep_0_1_wf/**/result_*.pklz'))


def test_without_graphviz_the_dot_file_is_written_with_a_warning(mini_bids, tmp_path):
    path_without_dot = os.pathsep.join(
        folder
        for folder in os.environ['PATH'].split(os.pathsep)
        if not os.path.exists(os.path.join(folder, 'dot'))
    )
    result = run_cli(
        mini_bids,
        tmp_path / 'out',
        'participant',
        '-w',
        tmp_path / 'work',
        '--dry-run',
        '--pipelines',
        'reorient',
        env={'PATH': path_without_dot},
    )
    assert result.returncode == 0, result.stderr
    assert "graphviz's `dot` is not installed" in result.stderr
    assert list((tmp_path / 'out' / 'logs').glob('*/workflow_graph.dot'))
    assert not list((tmp_path / 'out' / 'logs').glob('*/workflow_graph.svg'))


def test_boilerplate_only_writes_the_methods_text(mini_bids, tmp_path):
    result = run_cli(
        mini_bids, tmp_path / 'out', 'participant', '-w', tmp_path / 'work', '--boilerplate-only'
    )
    assert result.returncode == 0, result.stderr
    citation = (tmp_path / 'out' / 'logs' / 'CITATION.md').read_text()
    # Default pipelines; each paragraph once although three subjects use it.
    assert citation.count('Each T1w image was preprocessed following IGUANe') == 1
    assert 'HD-BET' in citation and 'QuickRigid' in citation
    assert not list((tmp_path / 'out').glob('sub-*/anat/*'))


def test_mr_harmonize_extends_mr_preproc_under_its_name_so_its_cache_is_shared(tmp_path):
    weights = save_weights({}, tmp_path / 'iguane.pt', name='iguane', provenance={})
    names, subject = {}, _subject(tmp_path, '01')
    for pipelines in (['mr-preproc'], ['mr-harmonize'], ['mr-preproc', 'mr-harmonize']):
        config = _config(tmp_path, pipelines, weights.path)
        workflow = init_mrctprep_wf(subjects=[subject], config=config)
        names[tuple(pipelines)] = {node.fullname for node in workflow._create_flat_graph()}
    preproc = names[('mr-preproc',)]
    harmonize = names[('mr-harmonize',)]
    assert preproc < harmonize  # every mr-preproc node, same name: cached results are reused
    assert names[('mr-preproc', 'mr-harmonize')] == harmonize  # built once, not twice
    added = {
        'harmonize',
        'harmonized_to_native',
        'model_input_to_native',
        'plot_harmonized',
        'ds_harmonized_mni',
        'ds_harmonized',
        'ds_report_harmonized',
    }
    prefix = 'mrctprep_0_1_wf.sub_01_wf.mr_preproc_wf.mr_preproc_{}_wf.{}'
    assert harmonize - preproc == {
        prefix.format(image, node) for image in ('run_1_T1w', 'run_2_T1w') for node in added
    }
