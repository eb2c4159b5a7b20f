"""What every subcommand shares on the console: -v/-q and the log format."""

from __future__ import annotations

import argparse
import logging


class HelpFormatter(argparse.HelpFormatter):
    """Each option's default once, after its help: not where the help already states it, and
    not for flags or for options whose unset value just means 'not given'."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ''
        default = action.default
        if (
            'default' in text
            or action.nargs == 0
            or default in (None, argparse.SUPPRESS)
            or default in ([], ())
        ):
            return text
        shown = ' '.join(map(str, default)) if isinstance(default, list | tuple) else default
        return f'{text} (default: {str(shown).replace("%", "%%")})'


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
