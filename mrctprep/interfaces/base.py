"""What the interfaces share: common inputs and outputs, and how a node loads and saves images.

nipype ships no type stubs: its specs and ``runtime`` are ``Any`` to mypy, and the traits
of a spec are checked by nipype when a value is set, not by mypy.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

import nibabel as nb
import numpy.typing as npt
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Bunch,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

_T = TypeVar('_T')


class TorchInputSpec(BaseInterfaceInputSpec):
    """Inputs of a node that runs a torch model.

    Device and threads change speed, not results: they are kept out of the cache hash, so
    that moving a run from CPU to GPU does not recompute it.
    """

    device = traits.Str('cpu', usedefault=True, nohash=True, desc='torch device')
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc='torch CPU threads')


class ImageInputSpec(BaseInterfaceInputSpec):
    """The image a node works on; what it must be is said by the interface's docstring."""

    in_file = File(exists=True, mandatory=True, desc='the input image (NIfTI)')


class ImageOutputSpec(TraitedSpec):
    """The image a node computes; what it holds is said by the interface's docstring."""

    out_file = File(exists=True, desc='the output image (NIfTI)')


class ImageMetadataOutputSpec(ImageOutputSpec):
    """The image a node computes, and what goes into its sidecar."""

    metadata = traits.Dict(desc='sidecar fields: what the step checked or did, and how')


class ImageInterface(SimpleInterface, ABC):
    """One image out of a node, saved in its working directory, with sidecar fields or not.

    A subclass names the file (``_out_name``; nipype's cache keeps it, so it must not change)
    and computes the image in :meth:`_compute`.
    """

    output_spec = ImageMetadataOutputSpec
    _out_name: ClassVar[str]
    #: the output that receives the image's path
    _out_trait: ClassVar[str] = 'out_file'

    def _run_interface(self, runtime: Bunch) -> Bunch:
        image, metadata = self._compute()
        self._results[self._out_trait] = save_image(image, runtime, self._out_name)
        if metadata is not None:
            self._results['metadata'] = metadata
        return runtime

    @abstractmethod
    def _compute(self) -> tuple[nb.Nifti1Image, dict[str, Any] | None]:
        """The image, and its sidecar fields (``None`` where the outputs have no metadata)."""


def defined_or_none(value: _T) -> _T | None:
    """An optional input as a Python value: nipype's ``Undefined`` becomes ``None``."""
    return value if isdefined(value) else None


def load_nifti(path: str) -> nb.Nifti1Image:
    """``nb.load`` (lazy, as it is) of the NIfTI files that nodes pass each other.

    ``nb.load`` is typed as returning any image format; the steps need a NIfTI's affine and
    header, so another format is refused here, by name, rather than somewhere inside a step.
    """
    img = nb.load(path)
    if not isinstance(img, nb.Nifti1Image):  # a NIfTI-2 image is a Nifti1Image too
        raise TypeError(f'{path}: expected a NIfTI image, got {type(img).__name__}')
    return img


def image_like(
    data: npt.NDArray[Any], like: nb.Nifti1Image, dtype: npt.DTypeLike
) -> nb.Nifti1Image:
    """``data`` with the affine and header of ``like``, stored on disk as ``dtype``."""
    img = nb.Nifti1Image(data, like.affine, like.header)
    img.set_data_dtype(dtype)
    return img


def save_image(img: nb.Nifti1Image, runtime: Bunch, name: str) -> str:
    """Write ``img`` as ``name`` in the node's working directory; return the path."""
    path = os.path.join(runtime.cwd, name)
    img.to_filename(path)
    return path
