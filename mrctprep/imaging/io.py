"""Reading images: inputs, with errors that name the file and the problem, and templates."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nb
import numpy as np
from nibabel.wrapstruct import WrapStructError


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


#: nilearn's public loaders of the ICBM 2009a symmetric maps it ships (nothing is downloaded).
_MNI152_LOADERS = {
    't1': 'load_mni152_template',
    'gm': 'load_mni152_gm_template',
    'wm': 'load_mni152_wm_template',
}


def load_mni152_unit_map(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """nilearn's 1 mm MNI152 2009a map ``kind`` (``'t1'`` brain, ``'gm'`` or ``'wm'``
    probability) as nilearn's public loader returns it, scaled 0..1, and its affine."""
    # nilearn.datasets takes about a second to import: only when a template is needed.
    from nilearn import datasets

    img = getattr(datasets, _MNI152_LOADERS[kind])(resolution=1)
    # nilearn caches the image it returns: a copy, so that callers may change theirs.
    return np.array(img.dataobj, dtype=np.float32), img.affine.copy()


def load_mni152_template(kind: str) -> nb.Nifti1Image:
    """The MNI152 2009a map ``kind`` in the 0-255 of the 8-bit files nilearn ships (float32).

    nilearn scales each map by its maximum, 255, and ``v / 255 * 255`` gives back every 8-bit
    value exactly in float32, so these are the files' values.
    """
    data, affine = load_mni152_unit_map(kind)
    return nb.Nifti1Image(data * np.float32(255), affine)


def quantise_to_int16(values: np.ndarray, step: float) -> tuple[np.ndarray, float, float]:
    """``values`` as int16 codes with the slope and intercept that give them back (NIfTI's
    ``scl_slope``/``scl_inter``), to within half a step; the step grows when the range needs
    more than 65535 of them.

    For smooth maps whose float32 low bits are noise to gzip: a bias field stored at 1e-4
    takes about 40 % of its float32 size.

    >>> values = np.array([0.5, 1.00004, 2.0])
    >>> codes, slope, intercept = quantise_to_int16(values, 1e-4)
    >>> error = np.abs(codes * slope + intercept - values).max()
    >>> codes.dtype, round(slope, 9), bool(error <= 5e-5)
    (dtype('int16'), 0.0001, True)
    >>> codes, slope, intercept = quantise_to_int16(np.full(4, 7.5), 0)
    >>> bool(np.all(codes * slope + intercept == 7.5))
    True
    """
    low, high = float(values.min()), float(values.max())
    # NIfTI stores both as float32: the codes are computed against those, codes -32767..32767
    # counted from the low end up (the intercept is the value of code 0).
    slope = float(np.float32(max(step, (high - low) / 65534) or 1.0))  # 1: a constant image
    intercept = float(np.float32(low + 32767 * slope))
    codes = np.round((values.astype(np.float64) - intercept) / slope)
    return np.clip(codes, -32768, 32767).astype(np.int16), slope, intercept
