"""Choosing the torch device once per run, loudly when falling back to the CPU."""

from __future__ import annotations

import logging
import os
import re

from mrctprep.bids_app.errors import ResourceError

LOGGER = logging.getLogger('mrctprep.models')

DEVICE_PATTERN = re.compile(r'auto|cpu|cuda(:\d+)?')


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a usable GPU is visible, else ``cpu`` with a warning.

    An explicit ``cuda``/``cuda:N`` that cannot be used is an error (exit 126), not a
    silent fallback: a user who asked for a GPU wants to know it is not there.
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
        LOGGER.warning('--device auto: no usable CUDA GPU found; models run on the CPU')
        return 'cpu'
    if not available:
        raise ResourceError(
            f'--device {requested}: torch {torch.__version__} sees no usable CUDA GPU '
            '(check CUDA_VISIBLE_DEVICES, `--nv` for Singularity, `--gpus all` for Docker)'
        )
    index = int(requested.partition(':')[2] or 0)
    if index >= torch.cuda.device_count():
        raise ResourceError(
            f'--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible'
        )
    return requested
