"""The participant level: check the dataset, plan, build the graph, write, run, summarise."""

from __future__ import annotations

import logging
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from mrctprep.cli.errors import EXIT_NODE_FAILED, EXIT_OK, describe_node_error
from mrctprep.cli.execution import (
    DropCrashTracebacks,
    configure_nipype,
    count_nodes,
    run_workflow,
)
from mrctprep.cli.plan import plan_subjects
from mrctprep.core.bids import read_dataset_description, validate_bids_dir
from mrctprep.core.config import RunConfig
from mrctprep.core.derivatives import (
    write_bidsignore,
    write_derivative_description,
    write_descriptions_tsv,
    write_text_atomically,
)
from mrctprep.core.errors import InputError, MrctprepError, WorkflowBuildError
from mrctprep.reports.citations import references_used, write_citation
from mrctprep.reports.crashes import collect_failures
from mrctprep.reports.records import pipelines_run, session_record, write_run_record
from mrctprep.reports.subject import report_subjects, write_subject_report
from mrctprep.workflows.base import SubjectPlan, init_mrctprep_wf
from mrctprep.workflows.literate import LiterateWorkflow

LOGGER = logging.getLogger(__name__)


def run_participant(config: RunConfig) -> int:
    """Check inputs, build the graph, write the dataset files, run, report failures, and
    write each subject's report."""
    inputs, execution = config.inputs, config.execution
    if execution.reports_only:
        return write_reports_only(config)
    started = datetime.now(UTC)
    raw_description = read_dataset_description(inputs.bids_dir)
    if inputs.skip_bids_validation:
        LOGGER.info('BIDS validation skipped (--skip-bids-validation)')
    else:
        validate_bids_dir(inputs.bids_dir)
    LOGGER.info(
        'mrctprep %s, run %s: %s -> %s',
        execution.version,
        execution.run_uuid,
        inputs.bids_dir,
        inputs.output_dir,
    )
    database_dir = inputs.bids_database_dir or execution.run_work_dir / 'bids_db'
    plan = plan_subjects(inputs, execution.pipelines, database_dir)
    configure_nipype(execution)
    workflow = _build_workflow(plan, config)

    _write_run_files(config, raw_description, plan)
    citation = write_boilerplate(workflow, plan, config)
    if execution.boilerplate_only:
        LOGGER.info('Methods text written to %s', citation)
        return EXIT_OK
    if execution.write_graph or execution.dry_run:
        log_dir = inputs.output_dir / 'logs' / execution.run_uuid
        LOGGER.info('Workflow graph written to %s', write_workflow_graph(workflow, log_dir))
    if execution.dry_run:
        LOGGER.info('Dry run: %d nodes built, none run', count_nodes(workflow))
        return EXIT_OK
    exit_code = _run_and_summarise(workflow, config, plan)
    write_reports(config, plan, started)
    return exit_code


def _build_workflow(plan: list[SubjectPlan], config: RunConfig) -> LiterateWorkflow:
    try:
        return init_mrctprep_wf(plan=plan, config=config)
    except MrctprepError:  # missing weights and the like: the user's to fix, with its own code
        raise
    except Exception as exc:  # any failure here is a bug or an unusable setting, not bad data
        raise WorkflowBuildError(f'the workflow could not be built: {exc!r}') from exc


def _write_run_files(config: RunConfig, raw_description: dict, plan: list[SubjectPlan]) -> None:
    """The run's settings (work dir and each subject's log) and the dataset-level files."""
    inputs, execution = config.inputs, config.execution
    settings = config.to_toml()
    execution.run_work_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(execution.run_work_dir / 'config.toml', settings)
    inputs.output_dir.mkdir(parents=True, exist_ok=True)
    write_derivative_description(inputs.bids_dir, inputs.output_dir, raw_description)
    write_bidsignore(inputs.output_dir)
    write_descriptions_tsv(inputs.output_dir)
    if execution.boilerplate_only:
        return
    for subject in sorted({item.subject_data.subject for item in plan}):
        write_text_atomically(config.subject_log_dir(subject) / 'mrctprep.toml', settings)


def _run_and_summarise(
    workflow: LiterateWorkflow, config: RunConfig, plan: list[SubjectPlan]
) -> int:
    execution = config.execution
    if execution.verbosity <= 0:
        logging.getLogger('nipype.workflow').addFilter(DropCrashTracebacks())
    scheduler_problems: list[str] = []
    try:
        scheduler_problems = run_workflow(workflow, execution)
    except RuntimeError as exc:
        LOGGER.debug('nipype: %s', exc)
    failures = collect_failures(config.inputs.output_dir, execution.run_uuid)
    labels = sorted({item.subject_data.label for item in plan})
    if not failures and not scheduler_problems:
        LOGGER.info(
            'All %d subject(s) finished; outputs in %s', len(labels), config.inputs.output_dir
        )
        return EXIT_OK
    for problem in scheduler_problems:
        LOGGER.error(problem)
    if failures:
        LOGGER.error('%d node(s) failed:', len(failures))
    for failure in failures:
        LOGGER.error(
            '  %s failed: %s (crash file: %s)',
            failure.node,
            describe_node_error(failure.error),
            failure.crash_file,
        )
    if not scheduler_problems:  # jobs the scheduler ended name no subject
        done = sorted(set(labels) - {failure.subject for failure in failures})
        LOGGER.error('Subjects that finished: %s', ', '.join(done) or 'none')
    return EXIT_NODE_FAILED


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


def write_boilerplate(
    workflow: LiterateWorkflow, plan: list[SubjectPlan], config: RunConfig
) -> Path:
    """``logs/CITATION.md`` (methods text users may paste into their papers, and the works
    the run used) and ``logs/CITATION.bib``."""
    pipelines = dict.fromkeys(name for item in plan for name in pipelines_run(item))
    methods = workflow.visit_desc() or 'No processing step was selected.\n'
    markdown, _ = write_citation(
        config.inputs.output_dir, methods, references_used(pipelines, config)
    )
    return markdown


def write_reports(config: RunConfig, plan: list[SubjectPlan], started: datetime) -> None:
    """Each subject's run record (what was found, run and skipped, and how long it took)
    and its report, ``OUTPUT_DIR/sub-<label>.html``."""
    finished = datetime.now(UTC)
    sessions: dict[str, list] = {}
    for item in plan:
        record = session_record(item, config.execution.pipelines, config.inputs.bids_dir)
        sessions.setdefault(item.subject_data.subject, []).append(record)
    for subject, records in sorted(sessions.items()):
        write_run_record(
            config.subject_log_dir(subject),
            subject,
            records,
            command=sys.argv,
            started=started,
            finished=finished,
        )
        write_subject_report(config.inputs.output_dir, subject)


def write_reports_only(config: RunConfig) -> int:
    """``--reports-only``: every selected subject's report again, from its outputs."""
    output_dir = config.inputs.output_dir
    subjects = report_subjects(output_dir, config.inputs.participant_label)
    if not subjects:
        raise InputError(
            f'no participant-level outputs (sub-*/) in {output_dir}: nothing to report on'
        )
    for subject in subjects:
        write_subject_report(output_dir, subject)
    LOGGER.info('%d report(s) written in %s', len(subjects), output_dir)
    return EXIT_OK
