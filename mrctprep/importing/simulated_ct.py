"""Simulated kernel/dose reconstructions of a BIDS dataset's CTs (``mrctprep simulate-ct``).

Each CT without a ``rec-`` entity is put through the scanner chain of
:mod:`mrctprep.imaging.ct_simulation` once per condition, and written beside it as
``..._rec-<kernel><dose %>_ct.nii.gz`` (``rec-`` placed where BIDS orders it: after ``acq-``
and ``ce-``, before ``run-``), on the same grid, as int16 HU, with a sidecar that copies the
source's acquisition facts, scales its dose figures, and says under ``Simulation`` that and
how the image was simulated. Existing variants are refused before anything is computed; then
each variant is written (atomically) as soon as it is computed, so memory holds one image per
process (``--nprocs``), a killed run leaves whole files only, and a CT that cannot be
simulated is reported and skipped while the others are written.
"""

from __future__ import annotations

import functools
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from mrctprep import __version__
from mrctprep.core.bids import read_sidecar, strip_image_suffix
from mrctprep.core.derivatives import write_atomically, write_json_atomically
from mrctprep.core.errors import ExistingImagesError, InputError
from mrctprep.imaging.ct_simulation import (
    KERNEL_FILTERS,
    OVERSAMPLING,
    ScanCondition,
    ScannerModel,
    simulate_volume,
)
from mrctprep.imaging.hounsfield import to_int16
from mrctprep.imaging.io import ImageReadError, load_image

LOGGER = logging.getLogger(__name__)
#: Sidecar fields that scale with the dose (tube current-time product, dose index).
DOSE_FIELDS = ('Exposure', 'ExposureTime', 'XRayTubeCurrent', 'CTDIvol')
#: In-plane pixels more anisotropic than this are refused (the simulated scanner's pixels
#: are square).
MAX_PIXEL_ANISOTROPY = 0.01
_REC_BEFORE = re.compile(r'_(run-[^_]+_)?(ct)$')


@dataclass(frozen=True)
class SimulatedCT:
    source: Path
    target: Path
    condition: ScanCondition


def source_cts(bids_dir: Path, participants: Sequence[str] = ()) -> list[Path]:
    """The dataset's CT images that are not themselves reconstructions (no ``rec-``)."""
    if not (bids_dir / 'dataset_description.json').is_file():
        raise InputError(f'{bids_dir}: not a BIDS dataset (no dataset_description.json)')
    found = [
        path
        for path in sorted(bids_dir.glob('sub-*/**/sub-*_ct.nii*'))
        if '_rec-' not in path.name and not path.name.startswith('.')
    ]
    if participants:
        wanted = {f'sub-{label.removeprefix("sub-")}' for label in participants}
        found = [path for path in found if path.name.split('_')[0] in wanted]
    if not found:
        raise InputError(f'{bids_dir}: no CT images (sub-*_ct.nii.gz without rec-) to simulate')
    return found


def variant_path(source: Path, condition: ScanCondition) -> Path:
    """``sub-01_run-1_ct.nii.gz`` -> ``sub-01_rec-sharp25_run-1_ct.nii.gz``."""
    stem = strip_image_suffix(source.name)
    if '_rec-' in stem:
        raise InputError(f'{source}: already a reconstruction variant (rec- entity)')
    new_stem = _REC_BEFORE.sub(lambda m: f'_rec-{condition.label}_{m.group(1) or ""}ct', stem)
    return source.with_name(new_stem + source.name[len(stem) :])


def plan_simulation(
    bids_dir: Path,
    conditions: Sequence[ScanCondition],
    participants: Sequence[str] = (),
    overwrite: bool = False,
) -> list[SimulatedCT]:
    plan = [
        SimulatedCT(source, variant_path(source, condition), condition)
        for source in source_cts(bids_dir, participants)
        for condition in conditions
    ]
    existing = [item.target.relative_to(bids_dir) for item in plan if item.target.exists()]
    if existing and not overwrite:
        raise ExistingImagesError(bids_dir, existing)
    return plan


def simulate_dataset(
    bids_dir: Path,
    conditions: Sequence[ScanCondition],
    *,
    participants: Sequence[str] = (),
    scanner: ScannerModel | None = None,
    seed: int = 0,
    overwrite: bool = False,
    processes: int = 1,
) -> list[Path]:
    """Write every CT's variants, ``processes`` images at a time; returns the written images.
    A CT that cannot be read is logged and skipped, and :class:`InputError` names all such CTs
    after the others are done."""
    scanner = scanner or ScannerModel()
    plan = plan_simulation(bids_dir, conditions, participants, overwrite)
    written: list[Path] = []
    failed: list[str] = []
    for number, (item, result) in enumerate(
        _simulated(plan, bids_dir, scanner, seed, processes), 1
    ):
        if isinstance(result, InputError):
            if item.source.name not in failed:  # once, with its first condition
                LOGGER.error('%s', result)
                failed.append(item.source.name)
            continue
        image, sidecar = result
        write_atomically(item.target, image.to_filename)
        write_json_atomically(item.target.with_name(_stem(item.target) + '.json'), sidecar)
        written.append(item.target)
        LOGGER.info('%d/%d: %s -> %s', number, len(plan), item.source.name, item.target.name)
    if failed:
        raise InputError(
            f'{len(failed)} CT image(s) not simulated (the others were written): '
            + ', '.join(failed)
        )
    return written


SimulationResult = tuple[nb.Nifti1Image, dict[str, Any]] | InputError


def _simulated(
    plan: list[SimulatedCT], bids_dir: Path, scanner: ScannerModel, seed: int, processes: int
) -> Iterator[tuple[SimulatedCT, SimulationResult]]:
    """Each planned variant with its image and sidecar (or why it failed), in plan order, as
    they are computed: in this process, or in a pool of ``processes``."""
    simulate = functools.partial(_simulate_or_error, bids_dir=bids_dir, scanner=scanner, seed=seed)
    if processes == 1:
        yield from ((item, simulate(item)) for item in plan)
        return
    with ProcessPoolExecutor(processes) as pool:
        yield from zip(plan, pool.map(simulate, plan), strict=True)


def _simulate_or_error(
    item: SimulatedCT, *, bids_dir: Path, scanner: ScannerModel, seed: int
) -> SimulationResult:
    try:
        return simulate_image(item, bids_dir, scanner, seed)
    except InputError as exc:
        return exc


def _stem(path: Path) -> str:
    return strip_image_suffix(path.name)


def simulate_image(
    item: SimulatedCT, bids_dir: Path, scanner: ScannerModel, seed: int
) -> tuple[nb.Nifti1Image, dict[str, Any]]:
    try:
        img = load_image(item.source)
    except ImageReadError as exc:
        raise InputError(str(exc)) from exc
    axial_axis, pixel_mm = _axial_geometry(img, item.source)
    # a seed per image and condition, stable across runs and platforms
    image_seed = zlib.crc32(f'{seed}:{item.target.name}'.encode())
    hu = np.asarray(img.dataobj, dtype=np.float64)
    if hu.ndim != 3:
        raise InputError(f'{item.source}: a 3-D CT is expected, found shape {hu.shape}')
    simulated = simulate_volume(hu, axial_axis, pixel_mm, item.condition, scanner, image_seed)
    out = nb.Nifti1Image(to_int16(simulated, name=str(item.target)), img.affine)
    out.header.set_qform(*img.get_qform(coded=True))
    out.header.set_sform(*img.get_sform(coded=True))
    out.header.set_xyzt_units(*img.header.get_xyzt_units())
    sidecar = _sidecar(read_sidecar(item.source), item, bids_dir, scanner, seed)
    return out, sidecar


def _axial_geometry(img: nb.Nifti1Image, path: Path) -> tuple[int, float]:
    """The array axis closest to inferior-superior, and the (square) in-plane pixel size."""
    orientation = nb.io_orientation(img.affine)
    axial_axis = int(np.flatnonzero(orientation[:, 0] == 2)[0])
    in_plane = [
        float(z) for axis, z in enumerate(img.header.get_zooms()[:3]) if axis != axial_axis
    ]
    if abs(in_plane[0] - in_plane[1]) > MAX_PIXEL_ANISOTROPY * max(in_plane):
        raise InputError(
            f'{path}: in-plane pixels of {in_plane[0]:g} x {in_plane[1]:g} mm; the simulated '
            'scanner needs square pixels (resample the image first)'
        )
    return axial_axis, in_plane[0]


def _sidecar(
    source: dict[str, Any], item: SimulatedCT, bids_dir: Path, scanner: ScannerModel, seed: int
) -> dict[str, Any]:
    condition = item.condition
    sidecar = {key: value for key, value in source.items() if key != 'Conversion'}
    for key in DOSE_FIELDS:
        if key in sidecar and key != 'ExposureTime' and isinstance(sidecar[key], int | float):
            sidecar[key] = sidecar[key] * condition.dose
    sidecar['ConvolutionKernel'] = f'simulated-{condition.kernel}'
    sidecar['ReconMethod'] = 'filtered back-projection (simulated)'
    sidecar['Simulation'] = {
        'Simulated': True,
        'Software': f'mrctprep simulate-ct {__version__}',
        'Source': f'bids::{item.source.relative_to(bids_dir).as_posix()}',
        'Kernel': condition.kernel,
        'ReconstructionFilter': KERNEL_FILTERS[condition.kernel],
        'DoseFraction': condition.dose,
        'Scanner': asdict(scanner) | {'Oversampling': OVERSAMPLING},
        'Seed': seed,
        'Method': 'parallel-beam Radon transform on a 2x finer grid, detector integration, '
        'Poisson and electronic noise, log, filtered back-projection (scikit-image)',
    }
    return sidecar
