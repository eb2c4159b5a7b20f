"""Running a volume-to-volume network on a whole volume, or in overlapping tiles when it does
not fit in memory (never a silent crop): chosen before running from the network's memory
estimate, and again should the device run out all the same."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from types import EllipsisType

import numpy as np
import torch

from mrctprep.core.errors import InsufficientMemoryError
from mrctprep.models.memory import StepMemory, available_bytes, gigabytes

LOGGER = logging.getLogger(__name__)

Predict = Callable[[torch.Tensor], torch.Tensor]
Shape3D = tuple[int, int, int]
#: A tile of a ``(N, C, D, H, W)`` batch or of a ``(D, H, W)`` volume alike.
Window = tuple[EllipsisType | slice, ...]


def predict_whole_or_tiled(
    predict: Predict,
    volume: torch.Tensor,
    *,
    multiple: int,
    memory: StepMemory | None = None,
    min_tile: int = 64,
) -> torch.Tensor:
    """``predict(volume)``, or the same in tiles when the volume does not fit in memory.

    ``volume`` is ``(1, C, D, H, W)`` on the model's device; the result comes back on the CPU.
    With ``memory`` (the network's inference estimate) the tile is chosen before running:
    :func:`tile_that_fits`. Should the device run out all the same (estimates of GPU memory
    miss the allocator's fragmentation), tiles are halved until they fit, down to
    ``min_tile`` voxels a side. Networks with whole-volume statistics (instance norm) give
    slightly different results in tiles, so tiling is logged as a warning.
    """
    shape = _spatial_shape(volume)
    if memory is not None:
        device = str(volume.device)
        tile = tile_that_fits(
            memory, shape, available_bytes(device), device=device, multiple=multiple,
            min_tile=min_tile,
        )  # fmt: skip
        if tile is not None:
            LOGGER.warning(
                '%s: the whole volume %s needs about %s, more than is available; predicting '
                'in tiles of %s',
                device,
                shape,
                gigabytes(memory.at(int(np.prod(shape))).total),
                tile,
            )
            return predict_in_tiles(predict, volume, tile=tile)
    try:
        return predict(volume).cpu()
    except RuntimeError as exc:  # torch.OutOfMemoryError included
        if not _is_out_of_memory(exc):
            raise
        LOGGER.warning(
            '%s: the whole volume %s does not fit in memory; predicting in tiles',
            volume.device,
            shape,
        )
    tile = shape
    while max(tile) > min_tile:
        tile = _halved(tile, multiple=multiple, min_tile=min_tile)
        _release_cached_memory(volume.device)
        try:
            return predict_in_tiles(predict, volume, tile=tile)
        except RuntimeError as exc:  # torch.OutOfMemoryError included
            if not _is_out_of_memory(exc):
                raise
            LOGGER.warning('tiles of %s do not fit either', tile)
    raise MemoryError(f'not even {min_tile}^3-voxel tiles fit in memory on {volume.device}')


def tile_that_fits(
    memory: StepMemory,
    shape: Shape3D,
    available: int,
    *,
    device: str,
    multiple: int,
    min_tile: int,
) -> Shape3D | None:
    """None when a volume of ``shape`` fits in ``available`` bytes of ``device``; else the
    first tile, of sides halved again and again (multiples of ``multiple``, at least
    ``min_tile``), that does; :class:`InsufficientMemoryError` when not even that does.

    >>> kilobyte_a_voxel = StepMemory(1000.0, {'network': 0})
    >>> fits = dict(device='cpu', multiple=16, min_tile=64)
    >>> tile_that_fits(kilobyte_a_voxel, (160, 192, 160), 10**10, **fits)
    >>> tile_that_fits(kilobyte_a_voxel, (160, 192, 160), 10**9, **fits)
    (80, 96, 80)
    """
    tile = shape
    while memory.at(int(np.prod(tile))).total > available:
        if max(tile) <= min_tile:
            raise InsufficientMemoryError(
                f'inference on tiles of {tile}',
                memory.at(int(np.prod(tile))).describe(),
                gigabytes(available),
                device,
                None,
            )
        tile = _halved(tile, multiple=multiple, min_tile=min_tile)
    return None if tile == shape else tile


def predict_in_tiles(
    predict: Predict,
    volume: torch.Tensor,
    *,
    tile: Shape3D,
    overlap: float = 0.25,
    tiles_per_call: int = 1,
) -> torch.Tensor:
    """Sliding-window prediction with Gaussian blending of the overlaps, stitched on the CPU.

    A network without whole-volume statistics gives back its whole-volume result, but for the
    tile edges' lack of context, weighted down by the blending. ``tiles_per_call`` tiles go to
    ``predict`` stacked along the batch axis (faster where memory allows).
    """
    spatial = _spatial_shape(volume)
    clipped = tuple(min(t, s) for t, s in zip(tile, spatial, strict=True))
    starts = [_tile_starts(size, t, overlap) for size, t in zip(spatial, clipped, strict=True)]
    windows = [_window(corner, clipped) for corner in itertools.product(*starts)]
    weight = _blend_weights(clipped)
    output: torch.Tensor | None = None
    weight_sum = torch.zeros(spatial)
    for first in range(0, len(windows), tiles_per_call):
        called = windows[first : first + tiles_per_call]
        batch = torch.cat([volume[window] for window in called])
        predictions = torch.split(predict(batch).float().cpu(), volume.shape[0])
        for window, prediction in zip(called, predictions, strict=True):
            if output is None:
                output = torch.zeros((*prediction.shape[:2], *spatial))
            output[window] += prediction * weight
            weight_sum[window] += weight
    assert output is not None  # every volume has at least one tile
    return output / weight_sum


def _spatial_shape(volume: torch.Tensor) -> Shape3D:
    depth, height, width = volume.shape[2:]
    return depth, height, width


def _halved(tile: Shape3D, *, multiple: int, min_tile: int) -> Shape3D:
    """Each side halved and rounded up to ``multiple``, but not below ``min_tile``."""
    depth, height, width = (max(min_tile, _round_up(size // 2, multiple)) for size in tile)
    return depth, height, width


def _window(corner: tuple[int, ...], tile: tuple[int, ...]) -> Window:
    return (..., *(slice(c, c + t) for c, t in zip(corner, tile, strict=True)))


def _tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    if tile >= size:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, size - tile, step))
    return [*starts, size - tile]


def _blend_weights(tile: tuple[int, ...]) -> torch.Tensor:
    """nnU-Net's and MONAI's Gaussian importance map (sigma = tile / 8): a tile's edges, where
    the network saw padding instead of context, weigh almost nothing."""
    profiles = []
    for length in tile:
        distance = np.arange(length, dtype=np.float64) - (length - 1) / 2
        profile = np.exp(-0.5 * (distance / (length / 8)) ** 2)
        profiles.append(torch.from_numpy(np.maximum(profile, 1e-6).astype(np.float32)))
    return profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _is_out_of_memory(exc: BaseException) -> bool:
    message = str(exc).lower()
    return (
        isinstance(exc, torch.OutOfMemoryError)
        or 'out of memory' in message
        or ("can't allocate memory" in message)
    )


def _release_cached_memory(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.empty_cache()
