"""Per-axis values of a 3D volume (shape, voxel size, start, slices) as tuples of three."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar('T')


def three(values: Iterable[T]) -> tuple[T, T, T]:
    """The values for the three axes, as a tuple of three; any other count is refused.

    >>> three(n // 2 for n in (4, 6, 9))
    (2, 3, 4)
    """
    first, second, third = values
    return first, second, third
