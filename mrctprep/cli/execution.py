"""Running a built workflow with nipype: plugin settings, progress, and what the console shows."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml
from nipype import config as nipype_config
from nipype import logging as nipype_logging
from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import plugins as nipype_plugins

from mrctprep.cli.slurm import (
    MODEL_SBATCH_ARGS,
    SLURM_PLUGINS,
    QueueUnreadableError,
    ensure_logname,
    request_node_resources,
    run_tag,
    wait_for_jobs,
)
from mrctprep.core.config import ExecutionOptions
from mrctprep.core.errors import InputError
from mrctprep.reports.crashes import short_node_name

LOGGER = logging.getLogger(__name__)


def read_plugin_file(path: Path) -> tuple[str, dict[str, Any]]:
    """``--use-plugin`` YAML: ``{plugin: NAME, plugin_args: {...}}``, any nipype plugin."""
    try:
        settings = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f'{path}: cannot read the plugin file: {exc}') from None
    if not isinstance(settings, dict) or not isinstance(settings.get('plugin'), str):
        raise InputError(f'{path}: a plugin file needs "plugin: NAME" (e.g. MultiProc, SLURM)')
    plugin = settings['plugin']
    if not hasattr(nipype_plugins, f'{plugin}Plugin'):
        known = sorted(n[: -len('Plugin')] for n in dir(nipype_plugins) if n.endswith('Plugin'))
        raise InputError(f'{path}: unknown nipype plugin {plugin!r}; known: {", ".join(known)}')
    plugin_args = settings.get('plugin_args') or {}
    if not isinstance(plugin_args, dict):
        raise InputError(f'{path}: "plugin_args" must be a mapping')
    return plugin, plugin_args


def plugin_settings(execution: ExecutionOptions) -> tuple[str, dict[str, Any]]:
    """The plugin and its arguments; the file's arguments win over --nprocs/--mem."""
    plugin_args = dict(execution.plugin_args)
    if execution.plugin == 'MultiProc':
        plugin_args.setdefault('n_procs', execution.nprocs)
        plugin_args.setdefault('raise_insufficient', False)
        if execution.mem_gb:
            plugin_args.setdefault('memory_gb', execution.mem_gb)
    return execution.plugin, plugin_args


def configure_nipype(execution: ExecutionOptions) -> None:
    """Global nipype settings for this process (NiPreps defaults).

    nipype's per-node chatter shows from ``-v`` on; its records go through our handler.
    """
    verbosity = execution.verbosity
    level = 'INFO' if verbosity == 1 else 'DEBUG' if verbosity > 1 else 'ERROR'
    nipype_config.update_config(
        {
            'execution': {
                'crashfile_format': 'txt',
                'remove_unnecessary_outputs': True,
                'check_version': False,
                'stop_on_first_crash': execution.stop_on_first_crash,
                'parameterize_dirs': False,
            },
            'monitoring': {'enabled': False},
            'logging': {'workflow_level': level, 'interface_level': level, 'utils_level': level},
        }
    )
    nipype_logging.update_logging(nipype_config)
    logging.getLogger('nipype').handlers.clear()


class _Progress:
    """``[3/24] sub-01 reorient_T1w_wf.reorient done (1.2 s)``, as nodes finish."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.started: dict[str, float] = {}

    def __call__(self, node, status: str) -> None:
        name = short_node_name(node.fullname)
        if status == 'start':
            self.started[node.fullname] = time.monotonic()
            return
        self.done += 1
        started = self.started.pop(node.fullname, None)
        took = f' ({time.monotonic() - started:.1f} s)' if started is not None else ''
        outcome = {'end': 'done', 'exception': 'FAILED'}.get(status, status)
        level = logging.ERROR if status == 'exception' else logging.INFO
        LOGGER.log(level, '[%d/%d] %s %s%s', self.done, self.total, name, outcome, took)


def run_workflow(workflow, execution: ExecutionOptions) -> list[str]:
    """Run the graph; nipype raises ``RuntimeError`` at the end if any node failed.

    Graph plugins submit every node as a job and return; for ``SLURMGraph`` this waits until
    the jobs have ended. Returns what went wrong beyond the nodes' crash files: jobs that the
    scheduler refused or ended.
    """
    plugin, plugin_args = plugin_settings(execution)
    total = count_nodes(workflow)
    if plugin in SLURM_PLUGINS:
        ensure_logname()
        request_node_resources(workflow, plugin_args, run_tag(execution.run_uuid))
    plugin_args.pop(MODEL_SBATCH_ARGS, None)
    submits_and_returns = issubclass(
        getattr(nipype_plugins, f'{plugin}Plugin'), nipype_plugins.base.GraphPluginBase
    )
    if not submits_and_returns:  # graph plugins warn that they cannot report progress
        plugin_args['status_callback'] = _Progress(total)
    LOGGER.info(
        'Running %d nodes with the %s plugin (work directory %s)',
        total,
        plugin,
        execution.work_dir,
    )
    workflow.run(plugin=plugin, plugin_args=plugin_args)
    if plugin == 'SLURMGraph':
        submit_script = execution.work_dir / workflow.name / 'batch' / 'submit_jobs.sh'
        return _wait_for_graph_jobs(submit_script, run_tag(execution.run_uuid))
    if submits_and_returns:
        LOGGER.warning(
            'The %s plugin submitted the jobs and returned: their outputs and failures appear '
            'as they finish, and this summary cannot include them',
            plugin,
        )
    return []


def _wait_for_graph_jobs(submit_script: Path, tag: str) -> list[str]:
    """Wait for the jobs of nipype's submit script; what the scheduler refused or ended."""
    submitted = submit_script.read_text().count('=$(sbatch ')
    LOGGER.info('%d job(s) handed to sbatch (%s); waiting for them', submitted, submit_script)
    try:
        ended, seen = wait_for_jobs(tag)
    except QueueUnreadableError as exc:  # not nipype's RuntimeError: this must not pass as done
        return [f'{exc}; the jobs may still be running: rerun with the same work directory']
    problems = [
        f'SLURM job {job.job_id} ({job.name}) ended {job.state} ({job.reason}); rerun with the '
        'same work directory to compute what did not finish'
        for job in ended
    ]
    if seen < submitted:
        problems.append(
            f'sbatch accepted {seen} of the {submitted} jobs: run `bash {submit_script}` '
            'to see its error'
        )
    # A job that could not even load its node (nipype's pickle) leaves no crash file.
    submitted_at = submit_script.stat().st_mtime
    for dump in sorted(submit_script.parent.glob('crashdump_*.pklz')):
        if dump.stat().st_mtime >= submitted_at:
            log = dump.with_name(
                f'batchscript_pyscript_{dump.stem.removeprefix("crashdump_")}.sh.e'
            )
            problems.append(f'a job failed before its node ran: see {log}')
    return problems


def count_nodes(workflow) -> int:
    """Nodes that will run: nipype drops IdentityInterface nodes before executing."""
    return sum(
        not isinstance(node.interface, IdentityInterface)
        for node in workflow._create_flat_graph().nodes()
    )


class DropCrashTracebacks(logging.Filter):
    """Keep nipype's full tracebacks out of the console; the summary names each crash file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith('Saving crash info to')
