"""NRRD images (attached or detached header) as NIfTI, with their world coordinates exact.

NRRD places voxel axis ``i`` at ``space origin + i * space directions[i]`` in the frame that
``space`` names; NIfTI's affine maps voxels to RAS. Only the signs of x and y differ between
the anatomical frames, so the conversion is exact.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nb
import nrrd
import numpy as np

from mrctprep.imaging.io import ImageReadError

#: Sign flips from each anatomical NRRD space to RAS (full names and their abbreviations).
_TO_RAS = {
    'right-anterior-superior': (1.0, 1.0, 1.0),
    'left-anterior-superior': (-1.0, 1.0, 1.0),
    'left-posterior-superior': (-1.0, -1.0, 1.0),
    'ras': (1.0, 1.0, 1.0),
    'las': (-1.0, 1.0, 1.0),
    'lps': (-1.0, -1.0, 1.0),
}

NRRD_EXTENSIONS = ('.nrrd', '.nhdr')


def load_nrrd(path: str | Path) -> nb.Nifti1Image:
    """Read a 3D NRRD into a NIfTI image whose affine carries its world coordinates.

    Voxel order is kept as stored (pynrrd's Fortran order: axis 0 is the fastest), so the
    array equals what any NRRD reader returns for the file.
    """
    path = Path(path)
    try:
        data, header = nrrd.read(str(path))
    except FileNotFoundError as exc:
        missing = Path(exc.filename or path)
        if missing == path:
            raise ImageReadError(f'{path}: file not found') from None
        raise ImageReadError(
            f'{path}: its detached data file {missing.name} is missing from {missing.parent}'
        ) from None
    except (nrrd.NRRDError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise ImageReadError(f'{path}: cannot read NRRD ({exc})') from None
    if data.ndim != 3:
        raise ImageReadError(f'{path}: expected a 3D volume, got {data.ndim} dimensions')
    affine = nrrd_affine(header, path=path)
    img = nb.Nifti1Image(data, affine)
    img.set_qform(affine, code='scanner')
    img.set_sform(affine, code='scanner')
    img.header.set_xyzt_units('mm')
    return img


def nrrd_affine(header: dict, *, path: Path) -> np.ndarray:
    """The RAS affine of a NRRD header (``space``, ``space directions``, ``space origin``)."""
    space = str(header.get('space', '')).lower()
    if space not in _TO_RAS:
        raise ImageReadError(
            f'{path}: NRRD space {header.get("space", "(none)")!r} is not an anatomical frame '
            f'(one of {", ".join(sorted(_TO_RAS))}); the orientation would be a guess'
        )
    directions = np.asarray(header.get('space directions'), dtype=np.float64)
    if directions.shape != (3, 3) or not np.all(np.isfinite(directions)):
        raise ImageReadError(f'{path}: NRRD "space directions" must give three spatial axes')
    origin = np.asarray(header.get('space origin', np.zeros(3)), dtype=np.float64)
    in_space = np.eye(4)
    # Each row of "space directions" is one voxel axis: a column of the affine.
    in_space[:3, :3] = directions.T
    in_space[:3, 3] = origin
    return np.diag([*_TO_RAS[space], 1.0]) @ in_space


def nrrd_files(path: str | Path) -> list[Path]:
    """The header and, for a detached header, its data file: what a copy must keep together."""
    path = Path(path)
    try:
        header = nrrd.read_header(str(path))
    except (nrrd.NRRDError, OSError, ValueError) as exc:
        raise ImageReadError(f'{path}: cannot read NRRD header ({exc})') from None
    data_file = header.get('data file') or header.get('datafile')
    if not data_file:
        return [path]
    relative = Path(data_file)
    multiple_files = ' ' in data_file.strip() or data_file.strip() == 'LIST'
    if multiple_files or relative.is_absolute() or '..' in relative.parts:
        raise ImageReadError(
            f'{path}: detached data file {data_file!r} must be a single file beside the header'
        )
    return [path, path.parent / relative]
