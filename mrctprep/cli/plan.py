"""Which pipelines each subject runs: decided once, before the graph is built."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mrctprep.core.bids import (
    build_queries,
    collect_subject_data,
    load_layout,
    select_participants,
)
from mrctprep.core.config import InputOptions
from mrctprep.core.errors import InputError
from mrctprep.workflows.base import SubjectPlan
from mrctprep.workflows.pipelines import PIPELINES, pipelines_to_build

LOGGER = logging.getLogger(__name__)


def plan_subjects(
    inputs: InputOptions, pipelines: Sequence[str], database_dir: Path
) -> list[SubjectPlan]:
    """Find each subject's inputs and the selected pipelines it has inputs for; skip, with a
    warning, the pipelines (and subjects) it lacks inputs for."""
    layout = load_layout(inputs.bids_dir, database_dir)
    participants = select_participants(layout, list(inputs.participant_label))
    queries = build_queries(inputs.bids_filters)
    selected = [PIPELINES[name] for name in pipelines]
    plan = []
    for participant in participants:
        for subject_data in collect_subject_data(
            layout, participant, queries, list(inputs.session_label)
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
                LOGGER.info('%s: %s', subject_data.label, ', '.join(runnable))
                plan.append(SubjectPlan(subject_data, tuple(pipelines_to_build(runnable))))
    if not plan:
        raise InputError(
            f'nothing to do: no selected subject of {inputs.bids_dir} has inputs for '
            f'{", ".join(pipelines)} (see `mrctprep --list-pipelines`)'
        )
    return plan
