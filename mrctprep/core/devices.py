"""Choosing the torch device once per run, loudly when falling back to the CPU."""

from __future__ import annotations

import logging
import os
import re
from contextlib import AbstractContextManager

from mrctprep.core.errors import DeviceUnavailableError

LOGGER = logging.getLogger(__name__)

DEVICE_PATTERN = re.compile(r'auto|cpu|cuda(:\d+)?')


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a usable GPU is visible, else ``cpu`` with a warning.

    An explicit ``cuda``/``cuda:N`` that cannot be used is an error, not a silent fallback:
    a user who asked for a GPU wants to know it is not there.
    """
    if requested == 'cpu':
        return 'cpu'
    # Ask NVML, not the CUDA runtime: a process that initialised CUDA cannot fork workers
    # that use it, and nipype's MultiProc forks its workers from this process.
    os.environ.setdefault('PYTORCH_NVML_BASED_CUDA_CHECK', '1')
    import torch  # deferred: importing torch costs seconds that --help should not pay

    available = torch.cuda.is_available()
    if requested == 'auto':
        if available:
            return 'cuda'
        LOGGER.warning('device auto: no usable CUDA GPU found; models run on the CPU')
        return 'cpu'
    if not available:
        raise DeviceUnavailableError(
            requested, f'torch {torch.__version__} sees no usable CUDA GPU'
        )
    index = int(requested.partition(':')[2] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            requested, f'only {torch.cuda.device_count()} CUDA device(s) visible'
        )
    return requested


def configure_torch_cpu(threads: int) -> None:
    """Cap torch's CPU threads at the run's threads per process, not the machine's CPUs, and
    flush denormal floats to zero: trained networks' small activations made a fine-tuning
    step of EfficientSCN's SCN 1.5x slower on a CPU (11.5 s against 7.6 s, measured)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def fast_precision(device: str) -> AbstractContextManager[object]:
    """The fastest precision that keeps our models' results (measured on the real heads).

    CUDA: float16 autocast. CPUs with bfloat16 units (AVX512-BF16/AMX): bfloat16 autocast on
    oneDNN, 6x (IGUANe training) to 25x (HD-BET) faster than float32 here. Other CPUs: float32
    without oneDNN, whose 3D convolutions were 3x slower than PyTorch's own for HD-BET.
    Layers that need float32 (IGUANe's norm, softmax) turn autocast off for themselves.
    """
    import torch

    if device.startswith('cuda'):
        return torch.autocast('cuda', dtype=torch.float16)
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return torch.autocast('cpu', dtype=torch.bfloat16)
    return torch.backends.mkldnn.flags(enabled=False)


def training_precision(device: str) -> AbstractContextManager[object]:
    """The precision of training steps: float16 autocast on CUDA (with loss scaling), float32
    on every CPU.

    The bfloat16 autocast that :func:`fast_precision` uses for inference on CPUs with bfloat16
    units made IGUANe training unrepeatable (a resumed run's losses differed from the straight
    run's in the sixth digit) and drove its generator losses to NaN within a few steps
    (measured on an AVX512-BF16 CPU); float32 without oneDNN is what CPUs without those units
    always ran.
    """
    import torch

    if device.startswith('cuda'):
        return torch.autocast('cuda', dtype=torch.float16)
    return torch.backends.mkldnn.flags(enabled=False)
