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


def run_workflow(workflow, execution: ExecutionOptions) -> None:
    """Run the graph; nipype raises ``RuntimeError`` at the end if any node failed."""
    plugin, plugin_args = plugin_settings(execution)
    total = count_nodes(workflow)
    plugin_args = {**plugin_args, 'status_callback': _Progress(total)}
    LOGGER.info(
        'Running %d nodes with the %s plugin (work directory %s)',
        total,
        plugin,
        execution.work_dir,
    )
    workflow.run(plugin=plugin, plugin_args=plugin_args)


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
