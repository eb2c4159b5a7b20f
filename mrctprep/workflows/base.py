"""The root workflow: one sub-workflow per subject (and session), each with its pipelines."""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass

from mrctprep.core.bids import SubjectData
from mrctprep.core.config import RunConfig
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.pipelines import Pipeline, build_pipeline

POLL_SLEEP_SECONDS = 0.1


@dataclass(frozen=True)
class SubjectPlan:
    """A subject (and session) and the pipelines decided for it, extended ones left out."""

    subject_data: SubjectData
    pipelines: tuple[Pipeline, ...]


def init_mrctprep_wf(*, plan: Sequence[SubjectPlan], config: RunConfig) -> LiterateWorkflow:
    """``mrctprep_<major>_<minor>_wf``: the version-stamped root in the work directory.

    The root is the one factory that reads the whole configuration: it hands each pipeline
    the sections that pipeline declares.
    """
    execution = config.execution
    workflow = LiterateWorkflow(name=execution.workflow_name)
    workflow.base_dir = str(execution.work_dir)
    # MultiProc checks for finished nodes every poll_sleep_duration (default 2 s, which adds
    # seconds to every step of a chain); only the workflow's own config is read for it.
    workflow.config['execution']['poll_sleep_duration'] = POLL_SLEEP_SECONDS
    for subject_plan in plan:
        subject_data = subject_plan.subject_data
        single_subject_wf = LiterateWorkflow(name=subject_data.label.replace('-', '_') + '_wf')
        for pipeline in subject_plan.pipelines:
            single_subject_wf.add_nodes([build_pipeline(pipeline, subject_data, config)])
        # Crash files go beside the subject's outputs, per run (NiPreps layout).
        single_subject_wf.config['execution']['crashdump_dir'] = str(
            config.subject_log_dir(subject_data.subject)
        )
        for node in single_subject_wf._get_all_nodes():
            node.config = deepcopy(single_subject_wf.config)
        workflow.add_nodes([single_subject_wf])
    return workflow
