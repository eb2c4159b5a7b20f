"""Reading images: inputs, with errors that name the file and the problem, and templates."""

from __future__ import annotations

import gzip
import importlib.resources
import zlib
from pathlib import Path

import nibabel as nb
import numpy as np
from nibabel.wrapstruct import WrapStructError

from mrctprep.core.templates import mni152_template_file


class ImageReadError(ValueError):
    """An input image that cannot be read completely (missing, truncated, not an image)."""


def load_image(path: str | Path) -> nb.Nifti1Image:
    """Load a NIfTI image with every voxel read now, so a damaged file fails here, by name.

    nibabel reads voxels lazily: a truncated ``.nii.gz`` opens fine and only fails later,
    deep inside some computation, with an error that does not say which file. The file is
    decompressed once into memory, so the reads that follow cost no second decompression;
    data types and scaling behave exactly as for an image loaded from disk.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
        if path.name.endswith('.gz'):
            content = gzip.decompress(content)
        img = _nifti_from_bytes(content)
        np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise ImageReadError(f'{path}: file not found') from None
    except (EOFError, OSError, zlib.error, WrapStructError, ValueError) as exc:
        raise ImageReadError(f'{path}: cannot read image ({_reason(exc)})') from None
    if img.ndim < 3:
        raise ImageReadError(f'{path}: expected a 3D image, got shape {img.shape}')
    return img


def _nifti_from_bytes(content: bytes) -> nb.Nifti1Image | nb.Nifti2Image:
    """NIfTI-1 or NIfTI-2, told apart by the header size that opens the file."""
    header_size = int.from_bytes(content[:4], 'little') if len(content) >= 4 else 0
    if header_size in (540, int.from_bytes((540).to_bytes(4, 'little'), 'big')):
        return nb.Nifti2Image.from_bytes(content)
    return nb.Nifti1Image.from_bytes(content)


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, EOFError) or 'end-of-stream' in text or 'Compressed file ended' in text:
        return f'the file is truncated: {text}'
    return text


def load_anatomical(path: str | Path) -> tuple[nb.Nifti1Image, list[str]]:
    """A 3D anatomical image checked for what breaks processing, and warnings for what may.

    Refused, naming the file: several volumes, NaN/Inf voxels, an all-zero image, and a header
    whose qform and sform codes are both 0 (the position in the world is unknown). A 4D file
    with a single volume is accepted as 3D. Coarse (> 1.5 mm) or anisotropic (> 2:1) voxels
    give warnings: the steps work, less accurately.
    """
    path = Path(path)
    img = load_image(path)
    if img.ndim > 3:
        if any(n != 1 for n in img.shape[3:]):
            raise ImageReadError(f'{path}: has {img.shape[3:]} volumes; one 3D volume expected')
        img = img.slicer[..., 0] if img.ndim == 4 else nb.funcs.squeeze_image(img)
    if int(img.header['qform_code']) == 0 and int(img.header['sform_code']) == 0:
        raise ImageReadError(
            f'{path}: no usable affine (qform_code and sform_code are both 0), so the image '
            'has no known position or orientation; fix the header (e.g. with the scanner '
            'conversion) and rerun'
        )
    data = np.asanyarray(img.dataobj)
    finite = np.isfinite(data)
    if not finite.all():
        raise ImageReadError(f'{path}: {int((~finite).sum())} voxels are NaN or infinite')
    if not data.any():
        raise ImageReadError(f'{path}: every voxel is 0')
    warnings = []
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    size = 'x'.join(f'{z:.2g}' for z in zooms)
    if max(zooms) > 1.5:
        warnings.append(
            f'{path.name}: {size} mm voxels are coarser than the 1 mm the steps were designed '
            'for; expect less accurate masks and registration'
        )
    if max(zooms) > 2 * min(zooms):
        warnings.append(f'{path.name}: anisotropic {size} mm voxels')
    return img, warnings


def load_mni152_template(kind: str) -> nb.Nifti1Image:
    """nilearn's bundled MNI152 2009a map ``kind`` (``'t1'``, ``'gm'``, ``'wm'``) in float32,
    read while the file is at hand (for a zipped package it is a temporary copy)."""
    with importlib.resources.as_file(mni152_template_file(kind)) as path:
        img = nb.Nifti1Image.from_filename(path)
        return nb.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine, img.header)


def load_mni152_unit_map(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled template map (T1 intensity or tissue probability, stored 0-255) as 0..1, and
    its affine."""
    img = load_mni152_template(kind)
    return img.get_fdata(dtype=np.float32) / np.float32(255), img.affine
