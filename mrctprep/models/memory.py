"""Memory a network needs, estimated before anything is loaded, against what the device has.

A fully convolutional network keeps, for its backward pass, activations whose size grows in
proportion to the number of input voxels. :func:`saved_bytes_per_voxel` measures that
proportion once, on a small probe input, by counting the tensors autograd saves; a model's
estimate then adds its weights, optimiser states and images by arithmetic. Inference keeps no
activations for a backward pass: :func:`inference_bytes_per_voxel` follows the tensors alive at
once during a probe pass instead. The OOM killer of a CPU machine gives no error message, so
training refuses, and inference tiles, what does not fit before it starts.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mrctprep.core.devices import fast_precision, training_precision
from mrctprep.core.errors import InsufficientMemoryError

LOGGER = logging.getLogger(__name__)

#: Adam keeps two moments per parameter, beside the parameter and its gradient.
BYTES_PER_TRAINED_PARAMETER = 4 * 4
PROBE_SIZE = 16
#: Inference probes a larger cube: its deepest level must not be a single voxel.
INFERENCE_PROBE_SIZE = 32
#: What an inference pass takes beyond its live tensors: oneDNN's workspaces and first-call
#: allocations (IGUANe on a CPU: peaks 62-64 MB above the live tensors at 64^3 and 96^3).
INFERENCE_RUNTIME_BYTES = 64 * 2**20
_CGROUP_LIMIT = Path('/sys/fs/cgroup/memory.max')
_CGROUP_USAGE = Path('/sys/fs/cgroup/memory.current')


@dataclass(frozen=True)
class StepMemory:
    """A model step's memory as a function of its input: activations in proportion to the
    voxels, and fixed parts (networks, optimisers, image caches, runtime)."""

    activation_bytes_per_voxel: float
    fixed: dict[str, int]

    def at(self, voxels: int) -> MemoryEstimate:
        activations = int(self.activation_bytes_per_voxel * voxels)
        return MemoryEstimate({'activations': activations, **self.fixed})

    def largest_fitting_cube(self, available: int, *, multiple: int, limit: int) -> int | None:
        """The largest cube side (a multiple of ``multiple``, at most ``limit``) that fits."""
        sides = range(multiple, limit + 1, multiple)
        fitting = [side for side in sides if self.at(side**3).total <= available]
        return fitting[-1] if fitting else None


def check_fits(
    memory: StepMemory,
    *,
    voxels: int,
    device: str,
    what: str,
    patch_multiple: int | None = None,
    patch_limit: int = 0,
) -> MemoryEstimate:
    """The estimate at ``voxels``; :class:`InsufficientMemoryError` when it does not fit,
    naming the largest patch side that would (for steps that take patches)."""
    estimate = memory.at(voxels)
    available = available_bytes(device)
    if estimate.total > available:
        fitting = (
            memory.largest_fitting_cube(available, multiple=patch_multiple, limit=patch_limit)
            if patch_multiple
            else None
        )
        raise InsufficientMemoryError(
            what, estimate.describe(), gigabytes(available), device, fitting
        )
    LOGGER.info(
        '%s: about %s of the %s available on %s',
        what,
        estimate.describe(),
        gigabytes(available),
        device,
    )
    return estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """The peak of one step, by what takes it (bytes)."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """``'5.1 GB (activations 3.9 GB, weights and optimiser 0.3 GB, ...)'``."""
        shown = ', '.join(f'{name} {gigabytes(size)}' for name, size in self.parts.items())
        return f'{gigabytes(self.total)} ({shown})'


def gigabytes(size: int) -> str:
    """A size in GiB, as the refusals print it.

    >>> gigabytes(3 * 2**30 // 2)
    '1.5 GB'
    """
    return f'{size / 2**30:.1f} GB'


def saved_bytes_per_voxel(network: nn.Module, *, channels: int = 1, device: str = 'cpu') -> float:
    """Bytes that a forward pass of ``network`` keeps for its backward pass, per input voxel.

    Measured on a :data:`PROBE_SIZE`-cube of zeros in the precision training runs in; the
    network's own parameters, which autograd also references, are not counted.
    """
    parameters = {p.data_ptr() for p in network.parameters()}
    saved: dict[tuple[int, int], int] = {}

    def count(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in parameters:
            saved[tensor.data_ptr(), tensor.numel()] = tensor.numel() * tensor.element_size()
        return tensor

    probe = torch.zeros((1, channels, PROBE_SIZE, PROBE_SIZE, PROBE_SIZE), device=device)
    with (
        torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor),
        training_precision(torch.device(device).type),
    ):
        network(probe)
    return sum(saved.values()) / PROBE_SIZE**3


class _LiveTensorBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Bytes of the tensor storages that the operations run under it create and that are still
    referenced, and their peak. A storage counts once however many views share it."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.references: Counter[int] = Counter()
        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        result = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(result):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return result

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.sizes:
            self.sizes[key] = storage.nbytes()
            self.current += self.sizes[key]
            self.peak = max(self.peak, self.current)
        self.references[key] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        self.references[key] -= 1
        if self.references[key] == 0:
            del self.references[key]
            self.current -= self.sizes.pop(key)


def inference_bytes_per_voxel(
    network: nn.Module, *, channels: int = 1, device: str = 'cpu'
) -> float:
    """The peak bytes of tensors alive at once during an inference pass of ``network``, per
    input voxel: measured on an :data:`INFERENCE_PROBE_SIZE`-cube in the precision inference
    runs in (activations of a fully convolutional network grow with the voxels)."""
    side = INFERENCE_PROBE_SIZE
    probe = torch.zeros((1, channels, side, side, side), device=device)
    live = _LiveTensorBytes()
    with torch.inference_mode(), fast_precision(torch.device(device).type), live:
        network(probe)
    return live.peak / side**3


def inference_memory(network: nn.Module, *, channels: int = 1, device: str = 'cpu') -> StepMemory:
    """An inference pass's memory: live tensors in proportion to the voxels, the network's
    weights and the runtime's own."""
    weights = sum(p.numel() * p.element_size() for p in network.parameters())
    fixed = {'network': weights, 'torch runtime': INFERENCE_RUNTIME_BYTES}
    per_voxel = inference_bytes_per_voxel(network, channels=channels, device=device)
    return StepMemory(per_voxel, fixed)


def trained_parameter_bytes(*networks: nn.Module) -> int:
    """Parameters, gradients and Adam's two moments of ``networks``, in float32."""
    count = sum(p.numel() for network in networks for p in network.parameters())
    return count * BYTES_PER_TRAINED_PARAMETER


def resident_bytes() -> int:
    """What this process holds in memory now (its resident set)."""
    pages = int(Path('/proc/self/statm').read_text().split()[1])
    return pages * os.sysconf('SC_PAGE_SIZE')


def peak_resident_bytes() -> int:
    """This process's high-water mark of resident memory (``VmHWM``). Not ``ru_maxrss``:
    Linux carries the parent's peak over into it across fork and exec."""
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
    raise RuntimeError('no VmHWM in /proc/self/status')


def available_bytes(device: str) -> int:
    """Memory a new allocation can take on ``device``: the GPU's free memory, or the RAM
    the kernel can give this process (the smaller of the machine's available memory and
    what its cgroup's limit leaves)."""
    if torch.device(device).type == 'cuda':
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    available = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    meminfo = Path('/proc/meminfo')
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith('MemAvailable:'):
                available = int(line.split()[1]) * 1024
    if _CGROUP_LIMIT.is_file() and _CGROUP_USAGE.is_file():
        limit = _CGROUP_LIMIT.read_text().strip()
        if limit != 'max':
            available = min(available, int(limit) - int(_CGROUP_USAGE.read_text()))
    return available
