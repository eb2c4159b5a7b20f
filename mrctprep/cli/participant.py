"""From a config to a nipype graph: collect inputs, plan each subject, build, draw, cite."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from mrctprep import __version__
from mrctprep.core.bids import (
    SubjectData,
    build_queries,
    collect_subject_data,
    load_layout,
    select_participants,
)
from mrctprep.core.config import RunConfig
from mrctprep.core.derivatives import write_text_atomically
from mrctprep.core.errors import InputError
from mrctprep.workflows.base import init_mrctprep_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.pipelines import PIPELINES

LOGGER = logging.getLogger('mrctprep')


@dataclass(frozen=True)
class Plan:
    """The subjects that will run, and the pipelines each has inputs for."""

    subjects: list[SubjectData]
    pipelines: dict[str, list[str]]


def plan_subjects(config: RunConfig) -> Plan:
    """Find each subject's inputs; skip, with a warning, subjects that lack them all."""
    database_dir = config.bids_database_dir or config.run_work_dir / 'bids_db'
    layout = load_layout(config.bids_dir, database_dir)
    participants = select_participants(layout, config.participant_label)
    queries = build_queries(config.bids_filters)
    selected = [PIPELINES[name] for name in config.pipelines]

    subjects, pipelines = [], {}
    for participant in participants:
        for subject_data in collect_subject_data(
            layout, participant, queries, config.session_label
        ):
            runnable = [p.name for p in selected if p.accepts(subject_data)]
            for pipeline in selected:
                if pipeline.name not in runnable:
                    LOGGER.warning(
                        '%s: skipping pipeline %s: no input (needs any of: %s)',
                        subject_data.label,
                        pipeline.name,
                        ', '.join(pipeline.inputs),
                    )
            if runnable:
                subjects.append(subject_data)
                pipelines[subject_data.label] = runnable
    if not subjects:
        raise InputError(
            f'nothing to do: no selected subject of {config.bids_dir} has inputs for '
            f'{", ".join(config.pipelines)} (see `mrctprep --list-pipelines`)'
        )
    return Plan(subjects, pipelines)


def build_workflow(config: RunConfig, plan: Plan) -> LiterateWorkflow:
    return init_mrctprep_wf(subjects=plan.subjects, config=config)


def write_workflow_graph(workflow: LiterateWorkflow, log_dir: Path) -> Path:
    """Draw the graph into the run's log folder: ``.svg`` via graphviz, ``.dot`` always."""
    log_dir.mkdir(parents=True, exist_ok=True)
    dot_file = log_dir / 'workflow_graph.dot'
    has_dot = shutil.which('dot') is not None
    if not has_dot:
        LOGGER.warning("graphviz's `dot` is not installed: writing %s only, no SVG", dot_file)
    workflow.write_graph(
        dotfilename=str(dot_file),
        graph2use='colored',
        format='svg' if has_dot else 'dot',
        simple_form=True,
    )
    return dot_file.with_suffix('.svg') if has_dot else dot_file


def write_boilerplate(workflow: LiterateWorkflow, output_dir: Path) -> Path:
    """``logs/CITATION.md``: the methods text that users may paste into their papers."""
    text = (
        '# Methods\n\nResults included in this manuscript come from preprocessing performed '
        f'using *mrctprep* {__version__}, a BIDS App built on Nipype.\n\n'
        + (workflow.visit_desc() or 'No processing step was selected.\n')
    )
    return write_text_atomically(output_dir / 'logs' / 'CITATION.md', text)
