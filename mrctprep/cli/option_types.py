"""Converters for argparse ``type=``: each turns one option's text into its value, or says why
it cannot (argparse then prints the usage and exits 2)."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from mrctprep.core.devices import DEVICE_PATTERN
from mrctprep.models.weights import model_names


def parse_memory_gb(value: str) -> float:
    """``--mem``: ``16G``, ``16GB``, ``16000M``, ``1T``; a bare number is MB (fMRIPrep).

    >>> parse_memory_gb('16G'), parse_memory_gb('8000MB'), parse_memory_gb('2048')
    (16.0, 7.8125, 2.0)
    """
    match = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*', value)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f'{value!r} is not a memory size such as 16G or 8000M')
    number, unit = float(match.group(1)), (match.group(2) or 'M').upper()
    return number * {'K': 1 / 1024**2, 'M': 1 / 1024, 'G': 1, 'T': 1024}[unit]


def positive_int(value: str) -> int:
    return _whole_number(value, 1, 'a positive integer')


def non_negative_int(value: str) -> int:
    return _whole_number(value, 0, 'a whole number of 0 or more')


def _whole_number(value: str, minimum: int, expected: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise argparse.ArgumentTypeError(f'{value!r} is not {expected}')
    return number


def positive_float(value: str) -> float:
    return _real_number(value, lambda number: number > 0, 'a positive number')


def non_negative_float(value: str) -> float:
    return _real_number(value, lambda number: number >= 0, 'a number of 0 or more')


def _real_number(value: str, allowed: Callable[[float], bool], expected: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and allowed(number)):
        raise argparse.ArgumentTypeError(f'{value!r} is not {expected}')
    return number


def drr_angles(value: str) -> list[list[float]]:
    """``--drr-angles "0,0;10,-5"``: (orbital, angulation) pairs in degrees."""
    pairs = []
    for part in value.split(';'):
        try:
            pair = [float(number) for number in part.split(',')]
        except ValueError:
            pair = []
        if len(pair) != 2 or not all(map(math.isfinite, pair)):
            raise argparse.ArgumentTypeError(
                f'{value!r}: use "ORBITAL,ANGULATION;ORBITAL,ANGULATION;..." in degrees'
            )
        pairs.append(pair)
    return pairs


def drr_view_grid(value: str) -> list[float]:
    """``--drr-view-grid -10:10:5``: both angles from START to STOP (inclusive) by STEP."""
    try:
        start, stop, step = (float(number) for number in value.split(':'))
    except ValueError:
        start, stop, step = 0.0, -1.0, 0.0
    if not (step > 0 and start <= stop and (stop - start) / step < 100):
        raise argparse.ArgumentTypeError(
            f'{value!r}: use START:STOP:STEP in degrees with START <= STOP, STEP > 0 and at '
            'most 100 steps'
        )
    return [start, stop, step]


def weights_option(value: str) -> tuple[str, Path]:
    name, separator, path = value.partition('=')
    if not separator or not path:
        raise argparse.ArgumentTypeError(f'{value!r}: expected NAME=FILE')
    if name not in model_names():
        raise argparse.ArgumentTypeError(
            f'{name!r}: unknown model; models: {", ".join(model_names())}'
        )
    return name, Path(path)


def device(value: str) -> str:
    if not DEVICE_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(f'{value!r}: use auto, cpu, cuda or cuda:N')
    return value


def existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f'{value}: file not found')
    return Path(os.path.abspath(path))


def absolute_path(value: str) -> Path:
    """A path made absolute against the current directory (links are not resolved)."""
    return Path(os.path.abspath(value))


def available_cpus() -> int:
    """CPUs this process may use (cgroup/SLURM affinity), not the machine's total."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
