"""mr-preproc speed and memory: each step as a plain function, then the nipype pipeline.

    python benchmarks/mr_preproc.py [--t1w FILE] [--nprocs N] [--skull-strip hdbet]

Prints, for one fresh process running the steps as plain functions, the seconds spent
importing their libraries and each step's seconds and the peak MB; then the pipeline's wall
time on the same image and its ratio to the plain steps, with and without the imports (the
engine's overhead; target <= 1.2); then two subjects run together with --nprocs N against
the same two run one after the other (target: never slower). Each time is the best of
``--repeats`` runs: this machine's timings vary by about a second.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED_T1W = Path(__file__).resolve().parents[2] / 'shared/data/mr/colin27_t1_head.nii.gz'


def peak_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def plain_functions(t1w: Path, method: str, threads: int, scratch: Path) -> None:
    """Run and time every step in this (fresh) process; print a JSON line of timings."""
    start = time.perf_counter()
    import ants  # noqa: F401
    import nibabel as nb
    import numpy as np
    import torch  # noqa: F401

    from mrctprep.imaging.bias import n4_bias_correct
    from mrctprep.imaging.figures import plot_contour_mosaic, plot_registration_flicker
    from mrctprep.imaging.intensity import crop, iguane_crop_box, median_normalise
    from mrctprep.imaging.io import load_anatomical
    from mrctprep.imaging.orientation import reorient_to_ras
    from mrctprep.imaging.registration import (
        RigidTransform,
        fsl_mni152_grid,
        mni152_brain_template,
        resample_to_grid,
        rigid_register,
    )
    from mrctprep.imaging.skullstrip import SkullStripSettings, brain_mask

    imports = time.perf_counter() - start
    timings = {}

    def step(name, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        return result

    img, _ = step('load + check', load_anatomical, t1w)
    ras, _ = step('reorient', reorient_to_ras, img)
    mask = step('skull strip', brain_mask, ras, SkullStripSettings(method, threads=threads))
    bias = step('n4', n4_bias_correct, ras, mask, threads=threads)
    brain = nb.Nifti1Image(
        bias.corrected.get_fdata(dtype=np.float32) * mask.get_fdata(), ras.affine
    )
    transform = step('register', rigid_register, brain, mni152_brain_template())
    grid = fsl_mni152_grid()
    mni_t1w = step('resample t1w', resample_to_grid, bias.corrected, grid, transform)
    mni_mask = step(
        'resample mask', resample_to_grid, mask, grid, transform, interpolation='nearest'
    )
    normalised, _ = step('normalise', median_normalise, mni_t1w, mni_mask)
    model_input = step('crop', lambda n: crop(n, iguane_crop_box(n.get_fdata())), normalised)

    def figures():
        plot_contour_mosaic(bias.corrected, mask, scratch / 'mask.svg', title='mask')
        template = resample_to_grid(mni152_brain_template(), normalised, RigidTransform(np.eye(4)))
        plot_registration_flicker(normalised, template, scratch / 'registration.svg', title='reg')

    step('figures', figures)

    def write_outputs():
        for index, image in enumerate(
            [bias.corrected, mask, bias.field, mni_t1w, mni_mask, model_input, ras]
        ):
            image.to_filename(scratch / f'output_{index}.nii.gz')
        transform.to_itk(scratch / 'fwd.txt')
        transform.inverse().to_itk(scratch / 'inv.txt')

    step('write outputs', write_outputs)
    print(json.dumps({'imports': imports, 'steps': timings, 'peak_mb': peak_mb()}))


def run_plain(t1w: Path, method: str, threads: int, scratch: Path) -> dict:
    output = subprocess.run(
        [
            sys.executable,
            __file__,
            '--plain-only',
            '--t1w',
            str(t1w),
            '--skull-strip',
            method,
            '--nprocs',
            str(threads),
            '--scratch',
            str(scratch),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def bids_with(t1w: Path, root: Path, subjects: list[str]) -> Path:
    root.mkdir(parents=True)
    (root / 'dataset_description.json').write_text(
        json.dumps({'Name': 'benchmark', 'BIDSVersion': '1.10.0'})
    )
    for subject in subjects:
        anat = root / f'sub-{subject}' / 'anat'
        anat.mkdir(parents=True)
        shutil.copyfile(t1w, anat / f'sub-{subject}_T1w.nii.gz')
    return root


def pipeline(bids: Path, out: Path, subjects: list[str], nprocs: int, omp: int, method: str):
    """Wall seconds of ``mrctprep ... participant --pipelines mr-preproc``."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            '-m',
            'mrctprep',
            str(bids),
            str(out),
            'participant',
            '--pipelines',
            'mr-preproc',
            '-w',
            str(out) + '_work',
            '--nprocs',
            str(nprocs),
            '--omp-nthreads',
            str(omp),
            '--skull-strip',
            method,
            '--device',
            'cpu',
            '--participant-label',
            *subjects,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--t1w', type=Path, default=SHARED_T1W)
    parser.add_argument('--nprocs', type=int, default=2)
    parser.add_argument('--skull-strip', default='hdbet')
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--plain-only', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--scratch', type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    omp = max(1, opts.nprocs)
    if opts.plain_only:
        plain_functions(opts.t1w, opts.skull_strip, omp, opts.scratch)
        return
    root = Path(tempfile.mkdtemp(prefix='mrctprep-bench-mr-'))
    print(f'{opts.t1w.name}, {opts.skull_strip}, {omp} thread(s) per step, best of {opts.repeats}')

    runs = [run_plain(opts.t1w, opts.skull_strip, omp, root) for _ in range(opts.repeats)]
    plain = min(runs, key=lambda run: sum(run['steps'].values()))
    print('plain functions, one fresh process:')
    print(f'  {"import libraries":<16} {plain["imports"]:6.1f} s')
    for name, seconds in plain['steps'].items():
        print(f'  {name:<16} {seconds:6.1f} s')
    steps = sum(plain['steps'].values())
    print(f'  {"sum of steps":<16} {steps:6.1f} s   peak {plain["peak_mb"]:6.0f} MB')

    bids = bids_with(opts.t1w, root / 'bids', ['a', 'b'])

    def best(subjects, nprocs, threads):
        return min(
            pipeline(
                bids,
                root / f'run{i}_{"".join(subjects)}',
                subjects,
                nprocs,
                threads,
                opts.skull_strip,
            )
            for i in range(opts.repeats)
        )

    one = best(['a'], opts.nprocs, omp)
    print(
        f'pipeline, one subject: {one:6.1f} s   peak {peak_mb(resource.RUSAGE_CHILDREN):6.0f} '
        'MB (largest process)'
    )
    print(
        f'  ratio to the plain steps {one / steps:.2f}; to the plain steps + imports '
        f'{one / (steps + plain["imports"]):.2f}'
    )
    other = best(['b'], opts.nprocs, omp)
    together = best(['a', 'b'], opts.nprocs, max(1, opts.nprocs // 2))
    print(
        f'two subjects: one after the other {one + other:6.1f} s, together with '
        f'--nprocs {opts.nprocs} {together:6.1f} s   speed-up {(one + other) / together:.2f}'
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
