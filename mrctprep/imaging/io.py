"""Reading images with errors that name the file and the problem."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nb
import numpy as np


class ImageReadError(ValueError):
    """An input image that cannot be read completely (missing, truncated, not an image)."""


def load_image(path: str | Path) -> nb.Nifti1Image:
    """Load a NIfTI image and read its voxels now, so a damaged file fails here, by name.

    nibabel reads voxels lazily: a truncated ``.nii.gz`` opens fine and only fails
    later, deep inside some computation, with an error that does not say which file.
    """
    path = Path(path)
    try:
        img = nb.load(path)
        np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise ImageReadError(f'{path}: file not found') from None
    except (EOFError, OSError, zlib.error, nb.filebasedimages.ImageFileError, ValueError) as exc:
        raise ImageReadError(f'{path}: cannot read image ({_reason(exc)})') from None
    if not isinstance(img, nb.Nifti1Image | nb.Nifti2Image):
        raise ImageReadError(f'{path}: expected a NIfTI image, got {type(img).__name__}')
    if img.ndim < 3:
        raise ImageReadError(f'{path}: expected a 3D image, got shape {img.shape}')
    return img


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, EOFError) or 'end-of-stream' in text or 'Compressed file ended' in text:
        return f'the file is truncated: {text}'
    return text
