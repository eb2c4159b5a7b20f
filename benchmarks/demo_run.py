"""Time the README's main job: demo dataset, participant run, and a resumed (cached) rerun.

    python benchmarks/demo_run.py [--nprocs N] [--keep DIR]

Prints seconds and peak resident memory (largest single process, MB) of each step, and the
ratio of the cached rerun to the first run (what resuming with the same -w costs).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of the largest child process so far."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, '-m', 'mrctprep', *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return seconds, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--nprocs', type=int, default=2)
    parser.add_argument('--keep', type=Path, help='write here instead of a temporary folder')
    opts = parser.parse_args()
    root = opts.keep or Path(tempfile.mkdtemp(prefix='mrctprep-bench-'))
    bids, out, work = root / 'bids', root / 'derivatives', root / 'work'
    run_args = [str(bids), str(out), 'participant', '-w', str(work), '--nprocs', str(opts.nprocs)]

    demo_s, demo_mb = timed(['demo', str(bids)])
    first_s, first_mb = timed(run_args)
    cached_s, _ = timed(run_args)
    print(f'demo dataset:           {demo_s:7.1f} s   peak {demo_mb:7.0f} MB')
    print(
        f'participant run:        {first_s:7.1f} s   peak {first_mb:7.0f} MB   '
        f'(--nprocs {opts.nprocs})'
    )
    print(
        f'rerun, same -w (cached): {cached_s:6.1f} s   ratio to first run {cached_s / first_s:.2f}'
    )
    print(
        f'outputs: {sum(1 for _ in out.rglob("*.nii.gz"))} NIfTI, '
        f'{sum(1 for _ in out.rglob("*.svg"))} figures in {out}'
    )


if __name__ == '__main__':
    main()
