"""What the interfaces share: the inputs of torch nodes, and how a node saves an image."""

from __future__ import annotations

import os

import nibabel as nb
from nipype.interfaces.base import BaseInterfaceInputSpec, traits


class TorchInputSpec(BaseInterfaceInputSpec):
    """Inputs of a node that runs a torch model.

    Device and threads change speed, not results: they are kept out of the cache hash, so
    that moving a run from CPU to GPU does not recompute it.
    """

    device = traits.Str('cpu', usedefault=True, nohash=True, desc='torch device')
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc='torch CPU threads')


def save_image(img: nb.Nifti1Image, runtime, name: str) -> str:
    """Write ``img`` as ``name`` in the node's working directory; return the path."""
    path = os.path.join(runtime.cwd, name)
    img.to_filename(path)
    return path
