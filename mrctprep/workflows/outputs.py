"""The one way workflows write derivatives: a :class:`DerivativesDataSink` node."""

from __future__ import annotations

from pathlib import Path

from nipype.pipeline import engine as pe

from mrctprep.interfaces.bids import DerivativesDataSink


def derivatives_sink(name: str, output_dir: str | Path, **inputs) -> pe.Node:
    """A sink node writing into ``output_dir``; ``inputs`` are DerivativesDataSink's (entities,
    suffix, datatype, dtype, static_meta, ...). Sinks only copy and rename, so they run in the
    main process instead of waiting for a worker."""
    return pe.Node(
        DerivativesDataSink(base_directory=str(output_dir), **inputs),
        name=name,
        run_without_submitting=True,
    )
