"""Errors that end a run with a one-line message and a documented exit code.

Exit codes follow the NiPreps convention (see README, "Exit codes").
"""

import os

EXIT_OK = 0
EXIT_NODE_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_BUILDABLE = os.EX_SOFTWARE  # 70
EXIT_RESOURCE = 126
EXIT_MISSING_BINARY = 127


class MrctprepError(Exception):
    """A problem the user can fix; shown as one line, without a traceback unless ``-v``."""

    exit_code = EXIT_USAGE


class InputError(MrctprepError):
    """The BIDS input, labels, filters or output locations are unusable."""

    exit_code = EXIT_USAGE


class WorkflowBuildError(MrctprepError):
    """The workflow could not be built from the selected pipelines and inputs."""

    exit_code = EXIT_NOT_BUILDABLE


class ResourceError(MrctprepError):
    """A required resource (model weights, template, device) is missing or unusable."""

    exit_code = EXIT_RESOURCE


def first_few(items: list[str], shown: int = 3) -> str:
    """Items for a one-line message: ``a, b, c (and 4 more)``.

    >>> first_few(['a', 'b', 'c', 'd', 'e'])
    'a, b, c (and 2 more)'
    """
    rest = f' (and {len(items) - shown} more)' if len(items) > shown else ''
    return ', '.join(items[:shown]) + rest
