"""The root workflow: one sub-workflow per subject (and session), each with its pipelines."""

from __future__ import annotations

from copy import deepcopy

from mrctprep.core.bids import SubjectData
from mrctprep.core.config import RunConfig
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.pipelines import pipelines_to_build

POLL_SLEEP_SECONDS = 0.1


def init_mrctprep_wf(*, subjects: list[SubjectData], config: RunConfig) -> LiterateWorkflow:
    """``mrctprep_<major>_<minor>_wf``: the version-stamped root in the work directory."""
    workflow = LiterateWorkflow(name=config.workflow_name)
    workflow.base_dir = str(config.work_dir)
    # MultiProc checks for finished nodes every poll_sleep_duration (default 2 s, which adds
    # seconds to every step of a chain); only the workflow's own config is read for it.
    workflow.config['execution']['poll_sleep_duration'] = POLL_SLEEP_SECONDS
    for subject_data in subjects:
        single_subject_wf = init_single_subject_wf(subject_data=subject_data, config=config)
        # Crash files go beside the subject's outputs, per run (NiPreps layout).
        single_subject_wf.config['execution']['crashdump_dir'] = str(
            config.subject_log_dir(subject_data.subject)
        )
        for node in single_subject_wf._get_all_nodes():
            node.config = deepcopy(single_subject_wf.config)
        workflow.add_nodes([single_subject_wf])
    return workflow


def init_single_subject_wf(
    *, subject_data: SubjectData, config: RunConfig, name: str | None = None
) -> LiterateWorkflow:
    """``sub_<l>[_ses_<l>]_wf``: the selected pipelines that this subject has inputs for."""
    workflow = LiterateWorkflow(name=name or subject_data.label.replace('-', '_') + '_wf')
    for pipeline in pipelines_to_build(config.pipelines):
        if pipeline.level == 'participant' and pipeline.accepts(subject_data):
            workflow.add_nodes([pipeline.build(subject_data, config)])
    return workflow
