"""DRR rendering speed of mrctprep against DiffDRR's trilinear renderer, same CT, same rays.

    python benchmarks/drr.py [--ct FILE] [--threads N]

CT: DiffDRR's own example chest CT (``diffdrr/data/cxr.nii.gz``, 512x512x133, 0.7x0.7x2.5 mm)
when the ``diffdrr`` package is installed (a benchmark-only dependency, never a requirement
of mrctprep: ``pip install --no-deps diffdrr torchio fastcore einops jaxtyping wadler-lindig
deprecated humanize``; it imports torchvision only for its metrics, which are not used here),
else the chest CT of ../shared/data (mrctprep alone is measured then).

Both renderers integrate the same volume, the linear attenuation (1/cm) that mrctprep's
``line-integral`` output integrates, along the same rays: DeepDRR's default C-arm (source to
detector 1020 mm, source to isocentre 530 mm, isocentre at the CT's centre, head-first
supine), 256x256 and 512x512 detectors covering the chest, one view (0, 0) and a batch of 8
views around it. DiffDRR gets the rays through ``DRR.render`` (its renderer, no pose
conversion) with its default 500 samples per ray; its batches are rendered in chunks of
pixels (its ``patch_size``) so that 8 views fit in memory. mrctprep's time includes making
its plane-major copy of the volume. Each tool runs in its own process, one after the other;
each figure is one run. Prints rays per second, mrctprep's speed-up (target >= 3x), the NCC
of the two line-integral images (target >= 0.99) and each process's peak memory (mrctprep's
target: <= 2 GB for 512x512 views of this CT).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
SIZES = {256: 2.8, 512: 1.4}  # detector pixels -> pixel size (mm): the whole chest in view
BATCH_VIEWS = [(0, 0), (5, 0), (-5, 0), (0, 5), (0, -5), (10, 10), (-10, 10), (10, -10)]


def diffdrr_ct() -> Path | None:
    try:
        import diffdrr
    except ImportError:
        return None
    return Path(diffdrr.__file__).parent / 'data' / 'cxr.nii.gz'


def view_geometries(ct_file: Path, pixels: int, views):
    import nibabel as nb

    from mrctprep.imaging.drr.geometry import view_geometry
    from mrctprep.imaging.drr.presets import PRESETS
    from mrctprep.imaging.drr.simulate import isocentre_in_world

    settings = PRESETS['deepdrr']
    carm = settings.carm.__class__(1020, 530, pixels, SIZES[pixels])
    isocentre = isocentre_in_world(nb.load(ct_file), settings)
    return [view_geometry(carm, settings.placement, isocentre, *view) for view in views]


def attenuation_volume(ct_file: Path):
    """The CT as linear attenuation (1/cm) at the 90 kVp spectrum's effective mu/rho."""
    import nibabel as nb
    import torch

    from mrctprep.imaging.drr.physics import hu_to_density, threshold_materials
    from mrctprep.imaging.drr.tables import effective_mass_attenuation, load_spectrum

    ct = nb.load(ct_file)
    hu = torch.as_tensor(np.asanyarray(ct.dataobj, dtype=np.float32))
    coefficients = torch.as_tensor(
        effective_mass_attenuation(load_spectrum(90)), dtype=torch.float32
    )
    return hu_to_density(hu) * coefficients[threshold_materials(hu).long()], ct.affine


def run_mrctprep(ct_file: Path, threads: int) -> dict:
    import torch

    from mrctprep.imaging.drr.renderer import Projector

    torch.set_num_threads(threads)
    volume, affine = attenuation_volume(ct_file)
    results = {}
    for pixels in SIZES:
        for batch in ([(0, 0)], BATCH_VIEWS):
            geometries = view_geometries(ct_file, pixels, batch)
            start = time.perf_counter()
            images = Projector(volume[None], affine).integrate(geometries)
            seconds = time.perf_counter() - start
            results[pixels, len(batch)] = (seconds, images[0, 0].numpy())
    results['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def run_diffdrr(ct_file: Path, threads: int) -> dict:
    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from torchio import ScalarImage

    torch.set_num_threads(threads)
    volume, affine = attenuation_volume(ct_file)
    # The CT's own world coordinates (no recentring, no reorientation), our volume as density.
    subject = read(ScalarImage(ct_file), orientation=None, center_volume=False)
    results = {}
    for pixels in SIZES:
        drr = DRR(subject, sdd=1020.0, height=pixels, delx=SIZES[pixels], renderer='trilinear')
        drr.density = volume
        for batch in ([(0, 0)], BATCH_VIEWS):
            geometries = view_geometries(ct_file, pixels, batch)
            source = torch.tensor(np.array([g.source for g in geometries]), dtype=torch.float32)
            target = torch.tensor(
                np.array([_pixel_centres(g) for g in geometries]), dtype=torch.float32
            )
            # Chunks of pixels for batches: 8 views at once would need tens of GB.
            drr.patch_size = None if len(batch) == 1 else pixels // 4
            start = time.perf_counter()
            with torch.no_grad():
                images = drr.render(drr.density, source[:, None], target)
            seconds = time.perf_counter() - start
            results[pixels, len(batch)] = (seconds, images[0, 0].view(pixels, pixels).numpy())
    results['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def _pixel_centres(geometry) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(geometry.pixels), np.arange(geometry.pixels), indexing='ij')
    return (
        geometry.first_pixel
        + cols.reshape(-1, 1) * geometry.column_step
        + rows.reshape(-1, 1) * geometry.row_step
    )


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def in_child(function, *args):
    """Run in a fresh process, so each tool's peak memory is its own."""
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        return pool.apply(function, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ct', type=Path, help='CT in HU (default: DiffDRR example chest CT)')
    parser.add_argument(
        '--threads',
        type=int,
        default=len(os.sched_getaffinity(0)),
        help='torch threads for both tools',
    )
    opts = parser.parse_args()
    reference_ct = diffdrr_ct()
    fallback_ct = SHARED_DATA / 'ct' / 'totalseg_pulmonary_ct_cropped.nii.gz'
    ct_file = opts.ct or reference_ct or fallback_ct
    print(f'CT: {ct_file}; torch threads: {opts.threads}')
    ours = in_child(run_mrctprep, ct_file, opts.threads)
    theirs = None
    if reference_ct is None:
        print('DiffDRR: not installed (pip install --no-deps diffdrr ...); mrctprep alone')
    else:
        theirs = in_child(run_diffdrr, ct_file, opts.threads)

    print(
        f'{"detector":>9} {"views":>5} {"mrctprep rays/s":>16} {"DiffDRR rays/s":>15} '
        f'{"speed-up":>8} {"NCC":>8}'
    )
    for pixels in SIZES:
        for views in (1, len(BATCH_VIEWS)):
            rays = views * pixels**2
            seconds, image = ours[pixels, views]
            line = f'{pixels:>5}x{pixels:<3} {views:>5} {rays / seconds:>16,.0f}'
            if theirs:
                their_seconds, their_image = theirs[pixels, views]
                line += (
                    f' {rays / their_seconds:>15,.0f} {their_seconds / seconds:>7.1f}x'
                    f' {ncc(image, their_image):>8.5f}'
                )
            print(line)
    peaks = f'mrctprep {ours["peak_mb"]:,.0f} MB'
    if theirs:
        peaks += f', DiffDRR {theirs["peak_mb"]:,.0f} MB'
    print(f'peak memory (whole process: CT, volumes, rendering): {peaks}')


if __name__ == '__main__':
    main()
