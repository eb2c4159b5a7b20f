"""Nodes that every pipeline builds the same way."""

from __future__ import annotations

from typing import Any

from nipype.pipeline import engine as pe

from mrctprep.core.config import ExecutionOptions

#: set on the nodes that run a torch model: schedulers may send them to GPUs
_RUNS_TORCH = '_mrctprep_runs_torch'


def torch_node(
    interface: type, *, name: str, execution: ExecutionOptions, mem_gb: float, **inputs: Any
) -> pe.Node:
    """A node that runs torch: on the run's device, with its threads per process and as many
    of the scheduler's CPU slots."""
    threads = execution.omp_nthreads
    node = pe.Node(
        interface(device=execution.device, num_threads=threads, **inputs),
        name=name,
        n_procs=threads,
        mem_gb=mem_gb,
    )
    setattr(node, _RUNS_TORCH, True)
    return node


def runs_torch(node: pe.Node) -> bool:
    """Whether ``node`` was built by :func:`torch_node` (copies of it included)."""
    return getattr(node, _RUNS_TORCH, False)
