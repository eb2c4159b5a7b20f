"""Sim2real CycleGAN: does a reduced-size CycleGAN, trained on a CPU within a time budget, bring
DRRs to a target radiograph domain, keeping the anatomy, better than histogram matching?

    python benchmarks/sim2real.py [--pairing mixed|issue] [--minutes 25] [--pixels 128]
                                  [--crop PIXELS] [--width 8] [--threads 2] [--figure FILE]

No real radiographs are available here, so the target domain is a STAND-IN: DRRs of
../shared/data/ct/totalseg_pulmonary_ct_cropped.nii.gz given a "clinical look" by
:func:`clinical_look` (exposure recognition with a film-like tone curve and partial histogram
equalisation, scatter-like low-pass veil, heel-effect gradient, Poisson noise, detector blur,
readout noise, collimator shutters; its sizes are in detector pixels). Both CTs are rendered
here with mrctprep's DRR renderer on square detectors of --pixels (the field of view of 256
pixels at any size), on a grid of 39 views. Two pairings (--pairing):

- ``issue`` (as the issue asks): domain A = the plain DRRs (DeepDRR neglog) of
  totalseg_example_ct.nii.gz (abdomen and pelvis), domain B = the look applied to the DRRs of
  the pulmonary CT (heart and lungs). The domains differ in anatomy as well as in look, and a
  CycleGAN's distribution matching then replaces anatomy (it draws a heart into the abdomen):
  the oracle below separates what the look changes from what the anatomy does.
- ``mixed`` (same anatomy in both domains, as real sim2real data has: chest DRRs vs chest
  radiographs): the views of both CTs alternate between the domains, so domain A holds plain
  DRRs of both anatomies and domain B the look on other views of both; no view is in both.

Every 4th image of each domain is held out.

The CycleGAN is upstream's architecture at a reduced width (ngf = ndf = --width, 9 residual
blocks) trained on --crop random crops (``crop`` preprocessing: the images as they are,
cropped and flipped; by default the whole image, flipped, as upstream's 512 crops of 552 nearly
are: its instance norm then sees a whole image's exposure) for as many steps as fit
in --minutes (measured on the first steps; the learning-rate schedule is upstream's, over
those steps). The baseline, in the same run, maps
each held-out DRR's intensities onto the training target images' pooled histogram (histogram
matching). On the held-out images it prints: the Wasserstein distance of intensity histograms
and the distance of radially averaged power spectra to the held-out target images, before
(plain DRRs), after (CycleGAN) and for the baseline, with the reductions (target >= 50 %);
the correlation of gradient magnitudes (Gaussian derivatives, sigma 2 pixels: anatomy's edges,
not pixel noise) between each DRR and its mapped image in the central 80 % of the image (the
collimator shutters of the look lie in the outer 6 %; they are no anatomy) (target >= 0.8),
also for the oracle
(the look itself applied to the held-out DRRs: what a perfect mapper would give);
training steps/s, inference seconds per 512x512 image (the trained width and upstream's
ngf 64), and peak memory. All figures are for a reduced size, not upstream's ngf 64 / 512
crops.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
DOMAIN_A_CT = SHARED_DATA / 'ct' / 'totalseg_example_ct.nii.gz'
DOMAIN_B_CT = SHARED_DATA / 'ct' / 'totalseg_pulmonary_ct_cropped.nii.gz'
FIELD_PIXELS = 256
#: detector pixel (mm) that puts each CT's field of view on a FIELD_PIXELS detector
PIXEL_SIZE = {DOMAIN_A_CT: 2.8, DOMAIN_B_CT: 1.5}
ANGLES = [(orbital, angulation) for orbital in range(-30, 31, 5) for angulation in (-10, 0, 10)]
HOLD_OUT_EVERY = 4


def render(ct_file: Path, pixels: int) -> list[np.ndarray]:
    """DeepDRR-preset DRRs (neglog, [0, 1]) of every view in :data:`ANGLES` on a ``pixels``
    square detector covering the same field of view at any size."""
    from mrctprep.imaging.drr.presets import resolve_drr_settings
    from mrctprep.imaging.drr.simulate import simulate_drr
    from mrctprep.imaging.io import load_image

    settings = resolve_drr_settings(
        'deepdrr',
        angles=ANGLES,
        detector_pixels=pixels,
        pixel_size_mm=PIXEL_SIZE[ct_file] * FIELD_PIXELS / pixels,
    )
    return [view.image.astype(np.float32) for view in simulate_drr(load_image(ct_file), settings)]


def clinical_look(drr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stand-in for a processed clinical radiograph's look, applied to a neglog DRR in [0, 1]:

    1. exposure recognition, as a radiography system's processing does: the values of
       interest are the exposed pixels' (above 0.02); a film-like sigmoid centred on their
       median, its slope set by their 2-98 % range (so an abdomen and a chest both fill the
       display range), blended half and half with the image's own cumulative histogram
       (histogram equalisation);
    2. scatter: a low-pass halo (Gaussian, sigma = 1/8 of the image) mixed in at 20 %,
       veiling the contrast;
    3. heel effect: exposure falling linearly by 15 % across the columns (anode side);
    4. quantum noise: Poisson, 3000 photons per pixel at full scale;
    5. detector blur (the scintillator's spread, which the quantum noise passes through):
       Gaussian, sigma 1.2 pixels;
    6. readout noise (the electronics', after the blur, so white): Gaussian, SD 0.5 % of
       full scale;
    7. collimator shutters: 3-6 % of each side left unexposed (bright), soft 2-pixel edges.
    """
    rows, columns = drr.shape
    neglog = np.clip(drr, 0, 1)
    low, median, high = np.percentile(neglog[neglog > 0.02], [2, 50, 98])
    film = 1 / (1 + np.exp(-(neglog - median) / (0.25 * (high - low))))
    toned = 0.5 * film + 0.5 * quantile_ranks(neglog, 257)
    toned = 0.8 * toned + 0.2 * ndimage.gaussian_filter(toned, rows / 8)
    toned *= 1 - 0.15 * np.linspace(0, 1, columns)[None, :]
    toned = rng.poisson(np.clip(toned, 0, None) * 3000) / 3000
    toned = ndimage.gaussian_filter(toned, 1.2) + rng.normal(0, 0.005, toned.shape)
    inset = (rng.uniform(0.03, 0.06, 4) * [rows, rows, columns, columns]).astype(int)
    open_field = np.zeros_like(toned)
    open_field[inset[0] : rows - inset[1], inset[2] : columns - inset[3]] = 1
    open_field = ndimage.gaussian_filter(open_field, 2)
    look = open_field * toned + (1 - open_field) * 0.95
    return np.clip(look, 0, 1).astype(np.float32)


def domains(
    pairing: str, pixels: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Domain A (plain DRRs) and domain B (the look) of ``pairing`` (see the module's
    docstring)."""
    if pairing == 'issue':
        return render(DOMAIN_A_CT, pixels), [
            clinical_look(i, rng) for i in render(DOMAIN_B_CT, pixels)
        ]
    views = [render(DOMAIN_A_CT, pixels), render(DOMAIN_B_CT, pixels)]
    plain = [image for ct in views for image in ct[0::2]]
    looked = [clinical_look(image, rng) for ct in views for image in ct[1::2]]
    return plain, looked


def central(image: np.ndarray, keep: float = 0.8) -> np.ndarray:
    """The central ``keep`` fraction of each side of ``image``."""
    rows, columns = (round(n * (1 - keep) / 2) for n in image.shape)
    return image[rows : image.shape[0] - rows, columns : image.shape[1] - columns]


def quantile_ranks(image: np.ndarray, levels: int) -> np.ndarray:
    """Each pixel's rank in ``image``'s own histogram, in [0, 1], interpolated between
    ``levels`` quantiles: histogram equalisation."""
    quantiles = np.linspace(0, 1, levels)
    return np.interp(image, np.quantile(image, quantiles), quantiles)


def histogram_match(image: np.ndarray, references: list[np.ndarray]) -> np.ndarray:
    """The baseline: ``image``'s intensities mapped by quantiles onto the pooled histogram of
    ``references``."""
    quantiles = np.linspace(0, 1, 1025)
    target = np.quantile(np.concatenate([r.ravel() for r in references]), quantiles)
    return np.interp(quantile_ranks(image, 1025), quantiles, target).astype(np.float32)


def split(images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    held = set(range(0, len(images), HOLD_OUT_EVERY))
    return [i for n, i in enumerate(images) if n not in held], [images[n] for n in sorted(held)]


def train(a, b, held, crop, width, budget_s):
    """A CycleGAN trained for as many steps as fit in ``budget_s``; its rate and step count."""
    from mrctprep.models.cyclegan_training import CycleGANSettings, CycleGANTraining, prepare
    from mrctprep.models.training import TrainingSettings, run_training

    def task(steps):
        settings = CycleGANSettings(
            steps=steps, crop_size=crop, preprocess='crop', ngf=width, ndf=width,
            validation_every=max(steps // 5, 1),
        )  # fmt: skip
        return CycleGANTraining(
            [prepare(i, settings) for i in a], [prepare(i, settings) for i in b], settings,
            validation=held,
        )  # fmt: skip

    probe, start = task(1000), time.perf_counter()
    for _ in range(5):
        probe.train_step()
    rate = 5 / (time.perf_counter() - start)
    steps = max(10, int(rate * budget_s))
    print(f'measured {rate:.2f} steps/s on 5 steps: training {steps} steps', flush=True)
    trained, start = task(steps), time.perf_counter()
    checkpoint = Path('/tmp') / f'sim2real_benchmark_{time.time_ns()}.pt'
    history = run_training(trained, TrainingSettings('cyclegan', steps, checkpoint, steps))
    checkpoint.unlink()
    seconds = time.perf_counter() - start
    return trained, steps / seconds, steps, seconds, history


def inference_seconds(generator, repeats=3) -> float:
    from mrctprep.models.cyclegan import translate

    image = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    translate(generator, image)
    start = time.perf_counter()
    for _ in range(repeats):
        translate(generator, image)
    return (time.perf_counter() - start) / repeats


def report(name, before, after, baseline):
    def cut(value):
        return f'{100 * (1 - value / before):5.1f} %'

    print(
        f'{name:<34} {before:8.4f} {after:8.4f} ({cut(after)}) {baseline:8.4f} ({cut(baseline)})'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pairing', choices=('issue', 'mixed'), default='mixed')
    parser.add_argument('--minutes', type=float, default=25.0, help='training time budget')
    parser.add_argument('--pixels', type=int, default=128, help='detector side of every DRR')
    parser.add_argument('--crop', type=int, help='training crop side (default: whole images)')
    parser.add_argument('--width', type=int, default=8, help='ngf = ndf')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--figure', type=Path, help='PNG: held-out A | CycleGAN | baseline | B')
    args = parser.parse_args()
    args.crop = args.crop or args.pixels

    import torch

    from mrctprep.imaging.radiographs import (
        gradient_correlation,
        histogram_wasserstein,
        spectrum_distance,
    )
    from mrctprep.models.cyclegan import ResnetGenerator, translate
    from mrctprep.models.training import seed_everything

    torch.set_num_threads(args.threads)
    seed_everything(0)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    domain_a, domain_b = domains(args.pairing, args.pixels, rng)
    print(
        f'pairing {args.pairing}: rendered {len(domain_a)} + {len(domain_b)} views in '
        f'{time.perf_counter() - start:.0f} s'
    )
    train_a, held_a = split(domain_a)
    train_b, held_b = split(domain_b)
    task, rate, steps, seconds, history = train(
        train_a, train_b, (held_a, held_b), args.crop, args.width, args.minutes * 60
    )
    generator = task.G_A.eval()
    mapped = [translate(generator, image) for image in held_a]
    baseline = [histogram_match(image, train_b) for image in held_a]
    # what a perfect mapper would give: the look itself applied to the held-out DRRs
    oracle = [clinical_look(image, rng) for image in held_a]

    print(
        f'\ntrained ngf = ndf = {args.width}, {args.crop} crops, {steps} steps in {seconds:.0f} s '
        f'({rate:.2f} steps/s, {args.threads} thread(s)); held out: {len(held_a)} A, '
        f'{len(held_b)} B; final losses '
        + ', '.join(f'{k} {v:.3f}' for k, v in history[-1].items() if k != 'step')
    )
    print(f'{"held-out distance to B":<34} {"DRR":>8} {"CycleGAN":>18} {"hist. match":>20}')
    report(
        'histogram Wasserstein',
        histogram_wasserstein(held_a, held_b),
        histogram_wasserstein(mapped, held_b),
        histogram_wasserstein(baseline, held_b),
    )
    report(
        'radial power spectrum (log10 RMS)',
        spectrum_distance(held_a, held_b),
        spectrum_distance(mapped, held_b),
        spectrum_distance(baseline, held_b),
    )
    print(
        f'{"(oracle: the look applied to A)":<34} '
        f'hist. {histogram_wasserstein(oracle, held_b):.4f}  '
        f'spectrum {spectrum_distance(oracle, held_b):.4f}'
    )
    for name, images in (('CycleGAN', mapped), ('hist. match', baseline), ('oracle', oracle)):
        kept = [
            gradient_correlation(central(a), central(m))
            for a, m in zip(held_a, images, strict=True)
        ]
        print(
            f'gradient-magnitude correlation, {name}: '
            f'mean {np.mean(kept):.3f}, min {np.min(kept):.3f}'
        )
    print(
        f'inference, 512x512, {args.threads} thread(s): ngf {args.width} '
        f'{inference_seconds(generator):.3f} s; upstream ngf 64 '
        f'{inference_seconds(ResnetGenerator().eval()):.3f} s'
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'peak memory (process): {peak:.0f} MB')
    if args.figure:
        save_figure(args.figure, held_a[:3], mapped[:3], baseline[:3], held_b[:3])


def save_figure(path, *columns) -> None:
    from PIL import Image

    rows = [
        np.concatenate([np.clip(c, 0, 1) for c in row], axis=1)
        for row in zip(*columns, strict=True)
    ]
    Image.fromarray(np.uint8(np.concatenate(rows) * 255)).save(path)
    print(f'figure (held-out A | CycleGAN | histogram matching | a held-out B): {path}')


if __name__ == '__main__':
    main()
