"""IGUANe on the demo's travelling subjects: training speed, inference speed, and the effect.

    python benchmarks/mr_harmonize.py [--derivatives DIR] [--steps 40] [--patch 32]
                                      [--device auto] [--threads 2]

Without ``--derivatives`` (an OUTPUT_DIR holding mr-preproc outputs of the demo dataset) the
demo dataset is generated and mr-preproc run on it first (about 2 minutes). Then, in this
process: IGUANe trained from scratch for ``--steps`` steps on random crops (steps/s, excluding
the first step, which loads the images) -- or, with ``--weights FILE``, the generator that
``group --train iguane`` wrote (for instance on a GPU machine) -- every model input harmonized
(seconds per 160x192x160 volume, best of the four, and the peak MB of the process), and the
figures of the issue: the mean absolute difference inside the brain between the two sites'
images of the same anatomy before and after (target: a fall of >= 30 %), the SSIM of each
harmonized image to its input (target >= 0.9), and the site effect (regional means, eta
squared) raw, after ComBat and after IGUANe.

Last, the ceiling of those figures on this dataset: what an ideal harmonizer of the site effect
would reach. Each siteB image is mapped to its own travelling partner's intensity distribution
(histogram matching inside the brain: the contrast part of the site effect, with knowledge no
harmonizer has), then also smoothed to siteA's lower noise (Gaussian, sigma 0.7 voxel). What
stays (noise, each scan's own residual bias field, interpolation) is not a site effect.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from helpers.metrics import structural_similarity

SPACE = 'space-MNI152NLin2009aSym_res-1'
PAIRS = (('01', '02'), ('03', '04'))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mr_preproc_outputs(scratch: Path) -> Path:
    def cli(*args):
        subprocess.run([sys.executable, '-m', 'mrctprep', *map(str, args)], check=True)

    cli('demo', scratch / 'bids')
    cli(
        scratch / 'bids',
        scratch / 'out',
        'participant',
        '-w',
        scratch / 'work',
        '--pipelines',
        'mr-preproc',
        '-q',
    )
    return scratch / 'out'


def train_from_scratch(norm, sites, opts, device):
    from mrctprep.models.iguane_training import (
        IguaneTraining,
        IguaneTrainingSettings,
        TrainingImage,
    )

    images = [TrainingImage(path=norm[s], site=site) for s, site in sites.items()]
    settings = IguaneTrainingSettings(
        steps=opts.steps, patch_size=(opts.patch,) * 3, device=device
    )
    training = IguaneTraining(
        [i for i in images if i.site == 'siteA'],
        {'siteB': [i for i in images if i.site == 'siteB']},
        settings,
    )
    training.train_step()
    start = time.perf_counter()
    for _ in range(opts.steps - 1):
        losses = training.train_step()
    train_seconds = time.perf_counter() - start
    print(
        f'training ({device}, {opts.threads} threads, crops {opts.patch}^3, one source '
        f'site): {(opts.steps - 1) / train_seconds:.3f} steps/s '
        f'({train_seconds / (opts.steps - 1):.2f} s/step); last losses '
        + ', '.join(f'{k} {v:.3g}' for k, v in losses.items())
    )
    return training.generator.eval(), settings.patch_size


def matched_histogram(source, reference):
    """``source``'s brain intensities mapped onto ``reference``'s brain distribution."""
    quantiles = np.linspace(0, 100, 1001)
    brain = source > 0
    matched = np.zeros_like(source)
    matched[brain] = np.interp(
        source[brain],
        np.percentile(source[brain], quantiles),
        np.percentile(reference[reference > 0], quantiles),
    )
    return matched


def brain_smoothed(image, sigma):
    """Gaussian smoothing inside the brain (normalised convolution: no background leaks in)."""
    brain = (image > 0).astype(np.float32)
    weight = np.maximum(ndimage.gaussian_filter(brain, sigma), 1e-3)
    return np.where(brain > 0, ndimage.gaussian_filter(image, sigma) / weight, 0)


def compare_pairs(label, inputs, outputs):
    for site_a, site_b in PAIRS:
        brain = (inputs[site_a] > 0) & (inputs[site_b] > 0)
        before = np.abs(inputs[site_a] - inputs[site_b])[brain].mean()
        after = np.abs(outputs[site_a] - outputs[site_b])[brain].mean()
        similarity = [
            structural_similarity(outputs[s], inputs[s], inputs[s] > 0) for s in (site_a, site_b)
        ]
        print(
            f'{label} sub-{site_a}/sub-{site_b}: mean |siteA - siteB| in the brain {before:.1f} '
            f'-> {after:.1f} ({100 * (1 - after / before):.1f} % less; target >= 30 %); SSIM '
            f'to input {similarity[0]:.3f} / {similarity[1]:.3f} (target >= 0.9)'
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--derivatives', type=Path, help='mr-preproc outputs of the demo')
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--patch', type=int, default=32, help='training crop size')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument(
        '--weights',
        type=Path,
        help='iguane weights (.pt and card) to evaluate instead of training',
    )
    opts = parser.parse_args()

    import nibabel as nb
    import pandas as pd

    from mrctprep.core.devices import resolve_device, set_torch_threads
    from mrctprep.group.harmonization import (
        ModelInput,
        combat_harmonize,
        combat_installed,
        regional_table,
        summarize_site_effects,
    )
    from mrctprep.group.sites import ParticipantInfo
    from mrctprep.models.iguane import harmonize_volume, load_generator
    from mrctprep.models.weights import resolve_weights

    with tempfile.TemporaryDirectory() as scratch:
        out = opts.derivatives or mr_preproc_outputs(Path(scratch))
        device = resolve_device(opts.device)
        set_torch_threads(opts.threads)
        sites = {'01': 'siteA', '02': 'siteB', '03': 'siteA', '04': 'siteB'}
        norm = {s: out / f'sub-{s}/anat/sub-{s}_{SPACE}_desc-norm_T1w.nii.gz' for s in sites}
        if opts.weights:
            weights = resolve_weights('iguane', explicit=opts.weights)
            generator = load_generator(str(weights.path), weights.sha256, device)
            tile = weights.trained_patch_size
            trained = weights.card.get('trained', {})
            print(
                f'weights {weights.path}: trained {trained.get("Steps")} steps, crops '
                f'{trained.get("PatchSize")}, on {trained.get("Device")}'
            )
        else:
            generator, tile = train_from_scratch(norm, sites, opts, device)
        inputs, outputs, seconds = {}, {}, []
        for subject, path in norm.items():
            inputs[subject] = nb.load(path).get_fdata(dtype=np.float32)
            start = time.perf_counter()
            outputs[subject] = harmonize_volume(inputs[subject], generator, device, tile=tile)
            seconds.append(time.perf_counter() - start)
        shape = 'x'.join(map(str, inputs['01'].shape))
        crops = f'in {"x".join(map(str, tile))} crops as trained' if tile else 'whole volume'
        print(
            f'inference ({device}, {crops}): {min(seconds):.2f} s per {shape} volume (best of 4; '
            f'worst {max(seconds):.2f}), peak {peak_mb():.0f} MB for the whole benchmark'
        )

        compare_pairs('IGUANe', inputs, outputs)
        if tile:
            whole = {s: harmonize_volume(x, generator, device) for s, x in inputs.items()}
            compare_pairs('IGUANe on whole volumes (not as trained)', inputs, whole)

        harmonized_dir = Path(scratch) / 'harmonized'
        harmonized_dir.mkdir(exist_ok=True)
        model_inputs = []
        for subject, path in norm.items():
            harmonized = harmonized_dir / path.name.replace('desc-norm', 'desc-harmonized')
            reference = nb.load(path)
            nb.Nifti1Image(outputs[subject], reference.affine).to_filename(harmonized)
            model_inputs.append(ModelInput(subject, None, path, harmonized))
        participants = {s: ParticipantInfo(s, site, None) for s, site in sites.items()}
        table = regional_table(model_inputs, participants, out)
        if combat_installed():  # the optional combat extra
            table['combat'] = combat_harmonize(table, participants, 'siteA')
        summary = summarize_site_effects(table)
        with pd.option_context('display.width', 120):
            print('site effect (eta squared of regional means, 0 = none):')
            print(summary.to_string(index=False))

        contrast_only, contrast_and_noise = dict(inputs), dict(inputs)
        for site_a, site_b in PAIRS:
            contrast_only[site_b] = matched_histogram(inputs[site_b], inputs[site_a])
            contrast_and_noise[site_b] = brain_smoothed(contrast_only[site_b], 0.7)
        print('ceiling (an ideal harmonizer of the site effect, see the docstring):')
        compare_pairs('contrast', inputs, contrast_only)
        compare_pairs('contrast+noise', inputs, contrast_and_noise)


if __name__ == '__main__':
    main()
