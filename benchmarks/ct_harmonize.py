"""CTFlow on a CPU: does the CPU size, trained within a time budget on simulated pairs of one
CT, bring unseen CTs' sharp/low-dose reconstructions closer to their reference, against a
regression CNN (the same RRDB encoder with its L1 head) trained for the same time?

    python benchmarks/ct_harmonize.py [--minutes 5] [--train-slices 24] [--test-slices 6]
                                      [--dicom-slices 2] [--dicom-views 360] [--samples 8]
                                      [--threads 2] [--seed 10] [--source-dose 0.25]
                                      [--crop 64] [--batch 8] [--paper-timing]
                                      [--save-models DIR]

Pairs: mrctprep's scanner simulation (imaging/ct_simulation.py) of every n-th axial slice of
../shared/data/ct/totalseg_example_ct.nii.gz as sharp kernel at 25 % dose (source; the dose is
--source-dose) and standard kernel at full dose (reference). Test: the same simulation of
slices of totalseg_pulmonary_ct_cropped.nii.gz and of the DICOM series
dicom/ct_abdomen_totalseg_j2k/ (read with SimpleITK), which training never saw.

Prints, per test CT: PSNR and SSIM in the body (reference > -500 HU, holes filled) in the
soft-tissue window [-160, 240] HU and the network's full window [-1024, 476] HU for the input,
CTFlow at tau 0 and 0.8 and the baseline; the relative distance (L2) of each image's radial
noise power spectrum to the reference's, and the curves, measured two ways in 16x16 ROIs where
the noise-free reference reconstruction is uniform: 'error NPS', of the image minus that
noise-free reconstruction (the simulation without quantum noise), which counts a harmonizer's
bias as noise; and 'noise NPS', of the difference of two scans (a second, independent noise
draw of source and reference, harmonized with another sampling seed) over sqrt(2), the
repeated-scan method of AAPM TG-233 and ICRU 87, which counts only what varies from scan to
scan; first-order and GLCM features in 32x32 body ROIs and the share with CCC >= 0.85 against
the reference (scikit-image's GLCM, not pyradiomics, which is not installed); uncertainty:
Spearman correlation of the SD over --samples draws with the absolute error, and the share of
body voxels whose error lies within 2 SD; training steps/s and inference seconds per volume
and per 512x512 slice for the CPU size and the paper size, and peak memory. All figures are
for the CPU size unless marked paper.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage, stats
from skimage.feature import graycomatrix, graycoprops
from skimage.metrics import structural_similarity

from mrctprep.imaging.ct_simulation import (
    ScanCondition,
    ScannerModel,
    radial_noise_power_spectrum,
    simulate_volume,
)
from mrctprep.models.ctflow import PAPER_SIZE, SIZES, CTFlow
from mrctprep.models.ctflow_encoder import RRDBNet
from mrctprep.models.ctflow_inference import harmonize_volume
from mrctprep.models.ctflow_training import CTFlowSettings, CTFlowTraining, random_batch

DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
SOURCE_KERNEL = 'sharp'
REFERENCE = ScanCondition('standard', 1.0)
WINDOWS = {'soft tissue': (-160.0, 240.0), 'full': (-1024.0, 476.0)}
CROP = 64
BATCH = 8
ROI = 32
NPS_ROI = 16
UNIFORM_HU = 10.0
#: the second scan's seed offset (its noise independent of the first's)
RESCAN = 1000
SQRT2 = np.sqrt(2.0)


def canonical_hu(path: Path) -> tuple[np.ndarray, float]:
    image = nb.as_closest_canonical(nb.load(path))
    return np.asarray(image.dataobj, dtype=np.float32), float(image.header.get_zooms()[0])


def dicom_hu(folder: Path) -> tuple[np.ndarray, float]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    hu = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32)
    return hu, float(image.GetSpacing()[0])


def body_slices(hu: np.ndarray, count: int) -> list[int]:
    body = [(hu[:, :, z] > -500).mean() for z in range(hu.shape[2])]
    candidates = [z for z, share in enumerate(body) if share > 0.2]
    return [int(z) for z in np.linspace(candidates[0], candidates[-1], count).round()]


def simulate_pair(hu: np.ndarray, pixel_mm: float, views: int | None, seed: int, dose: float):
    """The source (sharp kernel at ``dose``) and reference reconstructions of ``hu``."""
    scanner = ScannerModel(views=views)
    source = simulate_volume(hu, 2, pixel_mm, ScanCondition(SOURCE_KERNEL, dose), scanner, seed)
    reference = simulate_volume(hu, 2, pixel_mm, REFERENCE, scanner, seed + 1)
    return source.astype(np.float32), reference.astype(np.float32)


def noise_free_reference(hu: np.ndarray, pixel_mm: float, views: int | None) -> np.ndarray:
    """The reference reconstruction without quantum noise: what its noise is measured from."""
    return simulate_volume(hu, 2, pixel_mm, REFERENCE, ScannerModel(views=views), None)


def to_network(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu + 1024.0) / 1500.0, 0.0, 1.0).astype(np.float32)


def steps_within(pairs, minutes: float, crop: int, batch: int) -> int:
    """CTFlow's step count for ``minutes`` of CPU time: its three kinds of step (encoder L1,
    flow with the encoder frozen, both) timed on a probe, weighted as a run spends them."""
    probe = CTFlowTraining(
        pairs, CTFlowSettings(steps=12, pretrain_share=0.5, crop=crop, batch=batch)
    )
    seconds = []
    for _ in range(12):
        start = time.process_time()
        probe.train_step()
        seconds.append(time.process_time() - start)
    # the first step of each phase warms up; steps 1-6 L1, 7-9 frozen encoder, 10-12 joint
    l1, frozen, joint = np.mean(seconds[1:6]), np.mean(seconds[7:9]), np.mean(seconds[10:12])
    share = CTFlowSettings.pretrain_share
    per_step = share * l1 + (1 - share) * (0.5 * frozen + 0.5 * joint)
    print(
        f'CTFlow CPU seconds per step: encoder L1 {l1:.2f}, flow (encoder frozen) '
        f'{frozen:.2f}, flow and encoder {joint:.2f}'
    )
    return max(8, int(minutes * 60 / per_step))


def train_both(pairs, minutes: float, seed: int, crop: int, batch: int):
    """CTFlow and the L1 baseline, each for ``minutes`` of this process's CPU time (fair on a
    shared machine, where wall time depends on the neighbours) on the same data."""
    steps = steps_within(pairs, minutes, crop, batch)
    torch.manual_seed(seed)
    task = CTFlowTraining(pairs, CTFlowSettings(steps=steps, crop=crop, batch=batch, seed=seed))
    start = time.process_time()
    losses = []
    while task.step < steps and time.process_time() - start < minutes * 60 * 1.2:
        losses.append(task.train_step())
    flow_seconds = time.process_time() - start
    size = SIZES['cpu']
    torch.manual_seed(seed)
    baseline = RRDBNet(size.rrdb_blocks, size.features, size.growth, size.stacked_blocks)
    optimizer = torch.optim.Adam(baseline.parameters(), 2e-4, betas=(0.9, 0.99))
    rng = np.random.default_rng(seed)
    start = time.process_time()
    baseline_steps = 0
    while time.process_time() - start < flow_seconds:
        source, reference = random_batch(pairs, crop, batch, rng)
        loss = torch.nn.functional.l1_loss(baseline(source), reference)
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
        baseline_steps += 1
    print(
        f'training: CTFlow {task.step} steps ({task.settings.pretrain_steps} L1 pre-training) '
        f'in {flow_seconds:.0f} CPU s = {task.step / flow_seconds:.2f} steps per CPU s, last '
        f'losses {losses[-1]}; baseline {baseline_steps} steps in the same time '
        f'({baseline_steps / flow_seconds:.2f} steps per CPU s), batch {batch} x {crop}^2'
    )
    return task.model.eval(), baseline.eval()


@torch.no_grad()
def baseline_volume(baseline: RRDBNet, hu: np.ndarray) -> np.ndarray:
    slices = torch.from_numpy(to_network(np.moveaxis(hu, 2, 0))[:, None])
    pad = (0, -slices.shape[-1] % 8, 0, -slices.shape[-2] % 8)
    out = baseline(torch.nn.functional.pad(slices, pad))[..., : hu.shape[0], : hu.shape[1]]
    mapped = np.moveaxis(out[:, 0].clamp(0, 1).numpy() * 1500.0 - 1024.0, 0, 2)
    return np.where((hu < -1024) | (hu > 476), hu, mapped)


def body_mask(reference: np.ndarray) -> np.ndarray:
    mask = np.stack(
        [ndimage.binary_fill_holes(reference[:, :, z] > -500) for z in range(reference.shape[2])],
        axis=2,
    )
    return ndimage.binary_erosion(mask, structure=np.ones((5, 5, 1)))


def psnr_ssim(image, reference, body, window):
    low, high = window
    a, b = np.clip(image, low, high), np.clip(reference, low, high)
    mse = np.mean((a[body] - b[body]) ** 2)
    psnr = 10 * np.log10((high - low) ** 2 / mse)
    ssims = []
    for z in range(image.shape[2]):
        _, full = structural_similarity(a[:, :, z], b[:, :, z], data_range=high - low, full=True)
        ssims.append(full[body[:, :, z]])
    return psnr, float(np.mean(np.concatenate(ssims)))


def roi_corners(body: np.ndarray) -> list[tuple[int, int, int]]:
    inside = ndimage.binary_erosion(body, structure=np.ones((ROI, ROI, 1)))
    corners = []
    for z in range(body.shape[2]):
        xs, ys = np.nonzero(inside[:, :, z])
        for x, y in list(zip(xs, ys, strict=True))[:: max(1, len(xs) // 6)][:6]:
            corners.append((x - ROI // 2, y - ROI // 2, z))
    return corners


def uniform_roi_corners(clean: np.ndarray, body: np.ndarray) -> list[tuple[int, int, int]]:
    """NPS ROIs as ICRU 87 measures noise: in uniform regions. NPS_ROI-square, half-overlapping,
    inside the body, where the noise-free reference is uniform (the SD of its 2-pixel Gaussian
    smoothing below UNIFORM_HU: the original CT's own fine noise may stay, edges and vessels
    may not), so that a harmonizer's bias at edges does not count as noise."""
    smooth = ndimage.gaussian_filter(clean, sigma=(2, 2, 0))
    inside = ndimage.binary_erosion(body, structure=np.ones((NPS_ROI, NPS_ROI, 1)))
    corners = []
    for z in range(clean.shape[2]):
        for i in range(0, clean.shape[0] - NPS_ROI, NPS_ROI // 2):
            for j in range(0, clean.shape[1] - NPS_ROI, NPS_ROI // 2):
                window = (slice(i, i + NPS_ROI), slice(j, j + NPS_ROI), z)
                centre = (i + NPS_ROI // 2, j + NPS_ROI // 2, z)
                if inside[centre] and smooth[window].std() < UNIFORM_HU:
                    corners.append((i, j, z))
    return corners


def noise_power(noise, corners, pixel_mm) -> np.ndarray:
    """The radial NPS (8 bins to Nyquist, HU^2 mm^2) of a noise image in the uniform ROIs."""
    rois = np.stack([noise[i : i + NPS_ROI, j : j + NPS_ROI, z] for i, j, z in corners])
    return radial_noise_power_spectrum(rois, pixel_mm, bins=8)[1]


def harmonized_images(source, model, baseline, seed) -> tuple[dict[str, np.ndarray], float]:
    """The input and its three harmonizations, and the seconds CTFlow took at tau 0."""
    start = time.perf_counter()
    tau0 = harmonize_volume(model, source, tau=0.0).hu
    seconds = time.perf_counter() - start
    images = {
        'input': source,
        'CTFlow tau 0': tau0,
        'CTFlow tau 0.8': harmonize_volume(model, source, tau=0.8, seed=seed).hu,
        'baseline (L1)': baseline_volume(baseline, source),
    }
    return images, seconds


def nps_distance(curve: np.ndarray, target: np.ndarray) -> float:
    return float(np.linalg.norm(curve - target) / np.linalg.norm(target))


def features(image, corners) -> np.ndarray:
    rows = []
    for i, j, z in corners:
        roi = image[i : i + ROI, j : j + ROI, z]
        levels = np.clip((roi + 160) / 400 * 31, 0, 31).astype(np.uint8)
        glcm = graycomatrix(levels, [1], [0, np.pi / 2], levels=32, symmetric=True, normed=True)
        texture = [
            graycoprops(glcm, p).mean()
            for p in ('contrast', 'dissimilarity', 'homogeneity', 'energy', 'correlation')
        ]
        first = [roi.mean(), roi.std(), stats.skew(roi.ravel()), stats.kurtosis(roi.ravel())]
        first += list(np.percentile(roi, [10, 90]))
        rows.append(first + texture)
    return np.array(rows)


def ccc(a: np.ndarray, b: np.ndarray) -> float:
    covariance = np.mean((a - a.mean()) * (b - b.mean()))
    return float(2 * covariance / (a.var() + b.var() + (a.mean() - b.mean()) ** 2 + 1e-12))


def share_reproducible(image, reference, corners) -> float:
    x, y = features(image, corners), features(reference, corners)
    return float(np.mean([ccc(x[:, k], y[:, k]) >= 0.85 for k in range(x.shape[1])]))


def evaluate(name, truth, pixel_mm, views, model, baseline, *, samples, seed, dose):
    source, reference = simulate_pair(truth, pixel_mm, views, seed, dose)
    rescan_source, rescan_reference = simulate_pair(truth, pixel_mm, views, seed + RESCAN, dose)
    clean = noise_free_reference(truth, pixel_mm, views)
    body = body_mask(reference)
    images, seconds = harmonized_images(source, model, baseline, seed)
    rescans, _ = harmonized_images(rescan_source, model, baseline, seed + RESCAN)
    sampled = harmonize_volume(model, source, tau=0.8, samples=samples, seed=seed)
    corners = roi_corners(body)
    uniform = uniform_roi_corners(clean, body)
    print(
        f'\n{name}: {truth.shape[0]}x{truth.shape[1]}, {truth.shape[2]} slices at '
        f'{pixel_mm:.2f} mm; {int(body.sum())} body voxels, {len(corners)} feature ROIs of '
        f'{ROI}^2, {len(uniform)} uniform NPS ROIs of {NPS_ROI}^2; '
        f'CTFlow {seconds:.1f} s per volume ({seconds / source.shape[2]:.2f} s per slice)'
    )
    print(
        f'{"image":16s} {"PSNR st":>8s} {"SSIM st":>8s} {"PSNR full":>9s} {"SSIM full":>9s} '
        f'{"NPS dist":>8s} {"(noise)":>8s} {"CCC>=.85":>8s}'
    )
    scans = {'reference': (reference, rescan_reference)}
    scans |= {label: (image, rescans[label]) for label, image in images.items()}
    # per image: the error NPS and the noise (repeated-scan) NPS
    curves = {
        label: [
            noise_power(first - clean, uniform, pixel_mm),
            noise_power((first - second) / SQRT2, uniform, pixel_mm),
        ]
        for label, (first, second) in scans.items()
    }
    for label, image in images.items():
        figures = [
            f for window in WINDOWS.values() for f in psnr_ssim(image, reference, body, window)
        ]
        share = share_reproducible(image, reference, corners)
        distances = [
            nps_distance(curve, target)
            for curve, target in zip(curves[label], curves['reference'], strict=True)
        ]
        print(
            f'{label:16s} {figures[0]:8.2f} {figures[1]:8.3f} {figures[2]:9.2f} '
            f'{figures[3]:9.3f} {distances[0]:8.3f} {distances[1]:8.3f} {share:8.2f}'
        )
    for index, title in enumerate(('error', 'noise')):
        print(f'radial {title} NPS (HU^2 mm^2, 8 bins from 0 to Nyquist):')
        for label, pair in curves.items():
            print(f'  {label:16s} ' + ' '.join(f'{value:8.1f}' for value in pair[index]))
    error = np.abs(sampled.hu - reference)[body]
    std = sampled.std[body]
    rho = stats.spearmanr(std, error).statistic
    print(
        f'uncertainty ({samples} samples, tau 0.8): Spearman(SD, |error|) = {rho:.3f}; '
        f'|error| <= 2 SD for {np.mean(error <= 2 * std):.1%} of body voxels'
    )


def timing(size_name: str, size) -> None:
    model = CTFlow(size)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    x, y = torch.rand(2, 1, CROP, CROP), torch.rand(2, 1, CROP, CROP)
    start = time.perf_counter()
    for _ in range(2):
        loss = model.nll_bits_per_dim(x, y).mean()
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
    train = (time.perf_counter() - start) / 2
    model.eval()
    start = time.perf_counter()
    harmonize_volume(model, np.zeros((512, 512, 1), np.float32) - 1000, tau=0.8)
    infer = time.perf_counter() - start
    print(
        f'{size_name} size: {sum(p.numel() for p in model.parameters()):,} parameters; '
        f'{1 / train:.2f} training steps/s (batch 2 x {CROP}^2); {infer:.1f} s per 512x512 '
        'slice'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--minutes', type=float, default=5.0)
    parser.add_argument(
        '--source-dose', type=float, default=0.25, help="the sharp source's dose fraction"
    )
    parser.add_argument('--train-slices', type=int, default=24)
    parser.add_argument('--test-slices', type=int, default=6)
    parser.add_argument('--dicom-slices', type=int, default=2)
    parser.add_argument('--dicom-views', type=int, default=360)
    parser.add_argument('--samples', type=int, default=8)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=10)
    parser.add_argument('--crop', type=int, default=CROP)
    parser.add_argument('--paper-timing', action='store_true')
    parser.add_argument('--batch', type=int, default=BATCH)
    parser.add_argument(
        '--save-models', type=Path, metavar='DIR', help='keep both trained state dicts here'
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hu, pixel = canonical_hu(DATA / 'ct' / 'totalseg_example_ct.nii.gz')
    start = time.perf_counter()
    chosen = hu[:, :, body_slices(hu, args.train_slices)]
    source, reference = simulate_pair(chosen, pixel, None, args.seed, args.source_dose)
    print(
        f'simulated {chosen.shape[2]} training slice pairs in {time.perf_counter() - start:.0f} s'
    )
    pairs = []
    for z in range(chosen.shape[2]):
        padded = [np.pad(to_network(v[:, :, z]), ((0, 6), (0, 3))) for v in (source, reference)]
        pairs.append((padded[0], padded[1]))
    model, baseline = train_both(pairs, args.minutes, args.seed, args.crop, args.batch)
    if args.save_models:
        args.save_models.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save_models / 'ctflow_cpu.pt')
        torch.save(baseline.state_dict(), args.save_models / 'baseline_rrdb_l1.pt')
    pulmonary, pulmonary_pixel = canonical_hu(DATA / 'ct' / 'totalseg_pulmonary_ct_cropped.nii.gz')
    test = pulmonary[:, :, body_slices(pulmonary, args.test_slices)]
    measure = {'samples': args.samples, 'dose': args.source_dose}
    evaluate('pulmonary CT', test, pulmonary_pixel, None, model, baseline, seed=1, **measure)
    if args.dicom_slices:
        dicom, dicom_pixel = dicom_hu(DATA / 'dicom' / 'ct_abdomen_totalseg_j2k')
        test = dicom[:, :, body_slices(dicom, args.dicom_slices)]
        evaluate(
            'DICOM abdomen',
            test,
            dicom_pixel,
            args.dicom_views,
            model,
            baseline,
            seed=2,
            **measure,
        )
    print()
    timing('cpu', SIZES['cpu'])
    if args.paper_timing:
        timing('paper', PAPER_SIZE)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'peak memory {peak:.0f} MB (the whole benchmark)')


if __name__ == '__main__':
    main()
