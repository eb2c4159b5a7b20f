"""``mrctprep``: one command line, a subcommand per module.

``mrctprep BIDS_DIR OUTPUT_DIR participant|group`` is the BIDS App (the ``run`` subcommand,
which may be left out, as the BIDS-Apps convention wants); ``demo``, ``import``,
``import-weights`` and ``slurm-array`` are the tools beside it. Each module adds its own
subparser and handles its own options; building the parser imports neither nipype nor torch,
so that ``--help`` and ``--list-pipelines`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from mrctprep.cli import demo, import_images, import_weights, simulate_ct, slurm_array
from mrctprep.cli import run as run_command

# nipype asks a web service for updates on import; a BIDS App must not touch the network.
os.environ.setdefault('NIPYPE_NO_ET', '1')

SUBCOMMANDS = {
    'run': run_command,
    'demo': demo,
    'import': import_images,
    'import-weights': import_weights,
    'slurm-array': slurm_array,
    'simulate-ct': simulate_ct,
}


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """Run the command line ``argv``; return the exit code."""
    opts = parse_command_line(argv)
    return int(opts.handler(opts))


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """The options of ``argv``; ``arguments`` keeps the subcommand's own words, which
    ``--config-file`` parses again over the settings of the file."""
    argv = with_subcommand(argv)
    return build_parser().parse_args(argv, argparse.Namespace(arguments=argv[1:]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='mrctprep', description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest='command', required=True)
    for name, module in SUBCOMMANDS.items():
        module.add_parser(subparsers, name)
    return parser


def with_subcommand(argv: list[str]) -> list[str]:
    """``argv`` led by its subcommand: ``run`` unless another is named.

    A dataset folder that happens to be named like a command (``mrctprep demo out
    participant``) is the BIDS App's.

    >>> with_subcommand(['bids', 'out', 'participant']), with_subcommand(['demo', 'dir'])
    (['run', 'bids', 'out', 'participant'], ['demo', 'dir'])
    >>> with_subcommand(['demo', 'out', 'group']), with_subcommand(['--help'])
    (['run', 'demo', 'out', 'group'], ['run', '--help'])
    """
    is_bids_app_call = len(argv) >= 3 and argv[2] in ('participant', 'group')
    if argv and argv[0] in SUBCOMMANDS and not is_bids_app_call:
        return argv
    return ['run', *argv]
