"""Running the graph through SLURM: each node's own sbatch request, and waiting for the jobs
that nipype's graph plugins submit and leave.

nipype's ``SLURM`` plugin submits one job per node and polls them itself; ``SLURMGraph``
submits the whole graph at once, with dependencies, and returns. Both take a node's
``plugin_args['sbatch_args']``: mrctprep fills it with the node's own CPU and memory
estimates, and for nodes that run a torch model with the plugin file's
``model_sbatch_args`` (e.g. ``--partition=gpu --gres=gpu:1``) in place of ``sbatch_args``.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from nipype.interfaces.utility import IdentityInterface

from mrctprep.workflows.nodes import runs_torch

LOGGER = logging.getLogger(__name__)

SLURM_PLUGINS = ('SLURM', 'SLURMGraph')
#: the plugin file's key (beside nipype's ``sbatch_args``) for nodes that run a torch model
MODEL_SBATCH_ARGS = 'model_sbatch_args'
#: what a job needs beyond its node's estimate: Python with nipype and the interface's imports,
#: measured at 0.21 GB peak RSS for reorient's interfaces and 0.38 GB with torch
JOB_OVERHEAD_GB = 0.5
#: sbatch options that ask for GPUs
_GPU_REQUEST = re.compile(r'(--gres[= ]\S*gpu|--gpus|--gpus-per-\w+|(^|\s)-G)')
#: squeue's states of jobs that are over (squeue keeps them for the cluster's MinJobAge)
_ENDED = {'CD', 'F', 'CA', 'TO', 'OOM', 'NF', 'BF', 'DL', 'PR', 'RV', 'SE'}


def model_job_device(requested: str, plugin: str, plugin_args: dict[str, Any]) -> str | None:
    """The torch device of model nodes that the plugin file sends to GPU nodes, or None.

    Such nodes run where the GPU is, not where mrctprep starts (often a login node without
    one), so the device is not looked for here: ``auto`` means ``cuda`` for them, and a node
    that finds no GPU there fails with the error in its crash file.

    >>> model_job_device('auto', 'SLURMGraph', {MODEL_SBATCH_ARGS: '-p gpu --gres=gpu:a100:1'})
    'cuda'
    >>> model_job_device('auto', 'SLURM', {MODEL_SBATCH_ARGS: '--partition=bigmem'}) is None
    True
    """
    if plugin not in SLURM_PLUGINS or not asks_for_gpus(
        str(plugin_args.get(MODEL_SBATCH_ARGS, ''))
    ):
        return None
    return 'cuda' if requested == 'auto' else requested


def asks_for_gpus(sbatch_args: str) -> bool:
    """Whether these sbatch options request GPUs.

    >>> asks_for_gpus('--partition=gpu --gres=gpu:1'), asks_for_gpus('--partition=gpu')
    (True, False)
    """
    return bool(_GPU_REQUEST.search(sbatch_args))


def run_tag(run_uuid: str) -> str:
    """The ``--comment`` that marks this run's jobs in the queue.

    Without hyphens: nipype's SLURM plugin drops its own ``-o``/``-e`` log options when the
    sbatch arguments contain ``-o`` or ``-e`` anywhere (a uuid's ``-e84e`` would do).

    >>> run_tag('20261201-011000_bf01fb22-e84e-499d')
    'mrctprep:20261201_011000_bf01fb22_e84e_499d'
    """
    return f'mrctprep:{run_uuid.replace("-", "_")}'


def ensure_logname() -> None:
    """nipype's SLURM plugin names jobs after ``$LOGNAME``, which batch shells may not set."""
    os.environ.setdefault('LOGNAME', getpass.getuser())


def node_sbatch_args(n_procs: int, mem_gb: float, user_args: str, tag: str) -> str:
    """One node's sbatch arguments: its CPUs and memory, then the user's (which win when they
    repeat an option: sbatch keeps the last).

    >>> node_sbatch_args(2, 1.5, '--partition=gpu --gres=gpu:1', 'mrctprep:x')
    ' --cpus-per-task=2 --mem=2048M --comment=mrctprep:x --partition=gpu --gres=gpu:1'
    """
    mem_mb = math.ceil((mem_gb + JOB_OVERHEAD_GB) * 1024)
    request = f' --cpus-per-task={n_procs} --mem={mem_mb}M --comment={tag}'
    return f'{request} {user_args}'.rstrip()


def request_node_resources(workflow: Any, plugin_args: dict[str, Any], tag: str) -> None:
    """Give every node its sbatch arguments (replacing the plugin-wide ones): nipype's
    graph plugin otherwise glues a node's arguments to the global ones without a space."""
    plain = str(plugin_args.get('sbatch_args', ''))
    model = str(plugin_args.get(MODEL_SBATCH_ARGS, plain))
    for node in workflow._get_all_nodes():
        if isinstance(node.interface, IdentityInterface):
            continue
        user_args = model if runs_torch(node) else plain
        node.plugin_args = {
            'sbatch_args': node_sbatch_args(node.n_procs, node.mem_gb, user_args, tag),
            'overwrite': True,
        }


class QueueUnreadableError(Exception):
    """The scheduler's queue cannot be read, so whether the jobs ended is not known."""


@dataclass(frozen=True)
class EndedJob:
    """A job of this run that the scheduler ended other than by the node's own outcome."""

    job_id: str
    name: str
    state: str
    reason: str


def wait_for_jobs(tag: str, poll_s: float = 2.0) -> tuple[list[EndedJob], int]:
    """Wait until no job marked ``tag`` is pending or running, logging progress as it changes.

    Returns the jobs the scheduler ended (cancelled, timed out, out of memory, node failure),
    not those whose node failed (their crash file tells) nor those cancelled because a job
    they depend on failed; and how many jobs it saw. Pending jobs whose dependency can never
    be met are cancelled: clusters without ``DependencyParameters=kill_invalid_depend`` keep
    them forever.
    """
    seen: dict[str, tuple[str, str, str]] = {}
    last_counts: Counter[str] = Counter()
    while True:
        for job_id, name, state, reason in _queued_jobs(tag):
            seen[job_id] = (name, state, reason)
            if state == 'PD' and reason == 'DependencyNeverSatisfied':
                subprocess.run(['scancel', job_id], check=False)
        active = Counter(state for _, state, _ in seen.values() if state not in _ENDED)
        if not active:
            break
        if active != last_counts:
            counts = ', '.join(f'{n} {state}' for state, n in sorted(active.items()))
            LOGGER.info('Waiting for %d SLURM job(s) of this run: %s', active.total(), counts)
            last_counts = active
        time.sleep(poll_s)
    ended = [
        EndedJob(job_id, name, state, reason)
        for job_id, (name, state, reason) in seen.items()
        if state not in ('CD', 'F') and reason != 'DependencyNeverSatisfied'
    ]
    return ended, len(seen)


def _queued_jobs(tag: str) -> list[tuple[str, str, str, str]]:
    """``(id, name, state, reason)`` of the queue's jobs marked ``tag``, ended ones included."""
    command = ['squeue', '--noheader', '--states=all', '--format=%i|%j|%t|%r|%k']
    for attempt in range(5):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            break
        LOGGER.warning('squeue failed (%s); retrying', result.stderr.strip())
        time.sleep(2**attempt)
    else:
        raise QueueUnreadableError(f'squeue failed 5 times: {result.stderr.strip()}')
    jobs = []
    for line in result.stdout.splitlines():
        job_id, name, state, reason, comment = line.split('|', 4)
        if comment.strip() == tag:
            jobs.append((job_id, name, state, reason))
    return jobs
