"""``mrctprep slurm-array BIDS_DIR OUTPUT_DIR -w WORK_DIR``: a ready-to-submit SLURM script,
one array task per participant and a group-level job after them.

The script submits itself (``bash mrctprep_array.sh``): first as a job array whose task N runs
the participant level for the N-th participant, each in its own work folder, then as the group
level, which starts once every task has succeeded (and is cancelled if one failed).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from mrctprep.cli.console import setup_logging
from mrctprep.cli.errors import EXIT_OK, EXIT_USAGE
from mrctprep.cli.option_types import absolute_path, parse_memory_gb, positive_int
from mrctprep.core.errors import InputError

LOGGER = logging.getLogger(__name__)


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        prog=f'mrctprep {name}',
        help='write a SLURM job-array script: one task per participant, then the group level',
        description=__doc__.split('\n\n', 1)[1].replace('\n', ' '),
    )
    parser.add_argument('bids_dir', type=absolute_path, help='the BIDS dataset')
    parser.add_argument('output_dir', type=absolute_path, help='the derivatives folder')
    parser.add_argument(
        '-w', '--work-dir', type=absolute_path, required=True, help='scratch; a folder per task'
    )
    parser.add_argument(
        '-o', '--script', type=Path, default=None, help='where to write it (default: stdout)'
    )
    parser.add_argument('--participant-label', nargs='+', default=[], metavar='LABEL')
    parser.add_argument('--cpus-per-task', type=positive_int, default=4)
    parser.add_argument('--mem', type=parse_memory_gb, default=16.0, metavar='SIZE')
    parser.add_argument('--time', default='24:00:00', help="each task's time limit")
    parser.add_argument(
        '--sbatch-args',
        default='',
        help='more sbatch options, e.g. --sbatch-args="--partition=cpu --account=lab"',
    )
    parser.add_argument(
        '--container',
        type=absolute_path,
        default=None,
        metavar='SIF',
        help='run this Singularity/Apptainer image instead of the installed mrctprep',
    )
    parser.add_argument(
        '--run-args',
        default='',
        metavar='OPTIONS',
        help='options of every participant run, e.g. --run-args="--pipelines reorient"',
    )
    parser.set_defaults(handler=handle)


def handle(opts: argparse.Namespace) -> int:
    from mrctprep.core.bids import read_dataset_description, strip_prefix

    setup_logging(0)
    try:
        read_dataset_description(opts.bids_dir)
        labels = participants(opts.bids_dir, strip_prefix(opts.participant_label, 'sub-'))
    except InputError as exc:
        print(f'mrctprep: error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    text = array_script(
        bids_dir=opts.bids_dir,
        output_dir=opts.output_dir,
        work_dir=opts.work_dir,
        labels=labels,
        sbatch_options=[
            f'--cpus-per-task={opts.cpus_per_task}',
            f'--mem={round(opts.mem * 1024)}M',
            f'--time={opts.time}',
            *shlex.split(opts.sbatch_args),
        ],
        run_args=shlex.split(opts.run_args),
        container=opts.container,
    )
    if opts.script is None:
        sys.stdout.write(text)
        return EXIT_OK
    opts.script.write_text(text)
    opts.script.chmod(0o755)
    LOGGER.info(
        '%d array task(s) written to %s; submit with: bash %s', len(labels), *[opts.script] * 2
    )
    return EXIT_OK


def participants(bids_dir: Path, requested: list[str]) -> list[str]:
    """The dataset's subjects (``sub-*`` folders), or the requested ones, which must exist."""
    found = sorted(p.name[4:] for p in bids_dir.glob('sub-*') if p.is_dir())
    unknown = [label for label in requested if label not in found]
    if not found or unknown:
        missing = ', '.join(f'sub-{u}' for u in unknown) or 'any sub-*/ folder'
        raise InputError(f'{bids_dir}: {missing} not found')
    return requested or found


def array_script(
    *,
    bids_dir: Path,
    output_dir: Path,
    work_dir: Path,
    labels: list[str],
    sbatch_options: list[str],
    run_args: list[str],
    container: Path | None,
) -> str:
    """The self-submitting script: ``submit`` (the default), ``participant`` or ``group``."""
    from mrctprep import __version__
    from mrctprep.cli.slurm import asks_for_gpus  # imports nipype: not for --help

    q = shlex.quote
    log_dir = work_dir / 'slurm-logs'
    if container is None:
        command = 'mrctprep'
    else:  # the same paths inside, so that every path in the script means the same there
        binds = (
            f'-B {q(f"{bids_dir}:{bids_dir}:ro")} -B {q(str(output_dir))} -B {q(str(work_dir))}'
        )
        gpus = ' --nv' if asks_for_gpus(' '.join(sbatch_options)) else ''
        command = f'singularity run --cleanenv{gpus} {binds} {q(str(container))}'
    mem = next(o.split('=', 1)[1] for o in sbatch_options if o.startswith('--mem='))
    participant = (
        f'"${{mrctprep[@]}}" {q(str(bids_dir))} {q(str(output_dir))} participant '
        f'--participant-label "$label" -w {q(str(work_dir))}/sub-"$label" '
        f'--nprocs "$SLURM_CPUS_PER_TASK" --mem {mem} {shlex.join(run_args)}'
    ).rstrip()
    directives = ''.join(f'#SBATCH {option}\n' for option in sbatch_options)
    return f"""#!/bin/bash
#SBATCH --job-name=mrctprep
#SBATCH --output={q(str(log_dir))}/mrctprep-%A_%a.out
{directives}# Written by `mrctprep slurm-array` (mrctprep {__version__}); submit with bash, not
# sbatch: it submits itself as a job array, task N running the participant level for the N-th
# participant below in its own work folder, then the group level once every task succeeded.
set -euo pipefail
participants=({' '.join(q(label) for label in labels)})
mrctprep=({command})

case "${{1:-submit}}" in
submit)
    if [ -n "${{SLURM_JOB_ID:-}}" ]; then
        echo "submit this script with bash, not sbatch: it submits itself" >&2
        exit 2
    fi
    script=$(realpath "$0")
    mkdir -p {q(str(log_dir))}
    array=$(sbatch --parsable --array=0-$((${{#participants[@]}} - 1)) "$script" participant)
    group=$(sbatch --parsable --dependency=afterok:"$array" --kill-on-invalid-dep=yes \\
        --output={q(str(log_dir))}/mrctprep-group-%j.out "$script" group)
    echo "job array $array (${{#participants[@]}} participants), then group job $group"
    ;;
participant)
    label=${{participants[$SLURM_ARRAY_TASK_ID]}}
    {participant}
    ;;
group)
    "${{mrctprep[@]}}" {q(str(bids_dir))} {q(str(output_dir))} group -w {q(str(work_dir))}/group
    ;;
*)
    echo "usage: bash $0 [submit|participant|group]" >&2
    exit 2
    ;;
esac
"""
