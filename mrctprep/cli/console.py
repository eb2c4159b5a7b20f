"""What every subcommand shares on the console: -v/-q and the log format."""

from __future__ import annotations

import argparse
import logging


def add_verbosity_options(parser: argparse.ArgumentParser) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        '-v',
        '--verbose',
        action='count',
        default=0,
        help='more output (-vv: debug); errors then show their traceback',
    )
    verbosity.add_argument('-q', '--quiet', action='count', default=0, help='less output')


def setup_logging(verbosity: int) -> None:
    """-q/-qq quieter, -v/-vv louder (nipype's own levels follow ``verbosity`` too)."""
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(
        max(verbosity, -2), logging.DEBUG
    )
    logging.basicConfig(
        format='%(asctime)s %(levelname)-7s %(message)s', datefmt='%H:%M:%S', force=True
    )
    logging.getLogger('mrctprep').setLevel(level)
