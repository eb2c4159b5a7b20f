"""Nodes that every pipeline builds the same way."""

from __future__ import annotations

from typing import Any

from nipype.pipeline import engine as pe

from mrctprep.core.config import ExecutionOptions


def torch_node(
    interface: type, *, name: str, execution: ExecutionOptions, mem_gb: float, **inputs: Any
) -> pe.Node:
    """A node that runs torch: on the run's device, with its threads per process and as many
    of the scheduler's CPU slots."""
    threads = execution.omp_nthreads
    return pe.Node(
        interface(device=execution.device, num_threads=threads, **inputs),
        name=name,
        n_procs=threads,
        mem_gb=mem_gb,
    )
