"""IGUANe on a travelling-subject demo: the memory refusal, training, and what validation bought.

    mrctprep demo BIDS --participants-per-site 8
    mrctprep BIDS OUT participant --pipelines mr-preproc
    python benchmarks/mr_harmonize.py BIDS OUT [--steps 1800] [--patch 32] [--validate-every 300]
                                      [--head-scale 1] [--work DIR] [--threads 2] [--evaluate-only]

1. The out-of-memory case of issue 18: ``group --train iguane --steps 20`` with whole volumes
   (the default), as a new user would type it; its exit status, its message and the seconds it
   took to refuse (or, on a machine where the step fits, that it fits).
2. ``group --train iguane --train-patch-size P --steps N --validate-every V
   --iguane-head-scale S`` on the dataset
   (seconds, steps/s); skipped with ``--evaluate-only`` (the weights and checkpoint of an earlier
   run are evaluated).
3. The validation scores logged during training; the generator that validation kept (the
   weights file) and the last one (in the checkpoint), each on the held-out participants and on
   all of them, in crops of the training size (seconds per volume): the travelling-subject
   difference (mean absolute difference in the brain between a traveller's images at two sites)
   as a change
   from the raw images, the site effect of the 24 regional means (eta squared; ComBat's beside
   it) and the SSIM of every harmonized image to its input.
4. The ceiling of those figures on this dataset: each siteB image mapped onto its own travelling
   partner's brain histogram (the contrast part of the site effect, with knowledge no harmonizer
   has), then smoothed to siteA's lower noise (Gaussian, sigma 0.7 voxel).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from mrctprep.core.devices import configure_torch_cpu
from mrctprep.group.harmonization import (
    ModelInput,
    combat_harmonize,
    combat_installed,
    regional_table,
    site_effect,
)
from mrctprep.group.sites import read_participant_sites
from mrctprep.group.validation import HarmonizationScore, ValidationImage
from mrctprep.imaging.similarity import structural_similarity
from mrctprep.models.iguane import IguaneGenerator
from mrctprep.models.weights import card_path, trained_weights_file

SPACE = 'space-MNI152NLin2009aSym_res-1'


def mrctprep(*args: object) -> tuple[int, str, float]:
    """Runs the command line; its exit status, its last stderr line and its seconds."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, '-m', 'mrctprep', *map(str, args)], capture_output=True, text=True
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done.returncode, lines[-1] if lines else '', time.perf_counter() - start


def oom_case(bids: Path, out: Path, work: Path) -> None:
    code, message, seconds = mrctprep(
        bids, out, 'group', '--train', 'iguane', '--steps', '20', '-w', work / 'oom'
    )
    print(f'1. whole-volume training, the default (group --train iguane --steps 20): exit {code}')
    print(f'   after {seconds:.1f} s: {message}')


def train(bids: Path, out: Path, work: Path, opts: argparse.Namespace) -> None:
    code, message, seconds = mrctprep(
        bids, out, 'group', '--train', 'iguane', '--train-patch-size', opts.patch,
        '--steps', opts.steps, '--validate-every', opts.validate_every,
        '--iguane-head-scale', opts.head_scale,
        '--omp-nthreads', opts.threads, '-w', work, '--skip-bids-validation',
    )  # fmt: skip
    if code:
        sys.exit(f'training failed (exit {code}): {message}')
    print(
        f'2. training: {opts.steps} steps of {opts.patch}^3 crops, head scale {opts.head_scale}, '
        f'in {seconds / 60:.1f} min '
        f'({opts.steps / seconds:.2f} steps/s with validations every {opts.validate_every})'
    )


def trained_facts(out: Path) -> dict:
    card = card_path(trained_weights_file(out, 'iguane'))
    return json.loads(card.read_text()).get('trained', {})


def generators(out: Path, work: Path, trained: dict) -> dict[str, IguaneGenerator]:
    weights = trained_weights_file(out, 'iguane')
    best = IguaneGenerator()
    best.load_state_dict(torch.load(weights, map_location='cpu', weights_only=True))
    checkpoint = torch.load(
        work / 'train' / 'iguane' / 'checkpoint.pt', map_location='cpu', weights_only=False
    )
    last = IguaneGenerator()
    last.load_state_dict(checkpoint['task']['generator'])
    validation = trained.get('Validation', {})
    log = pd.read_csv(weights.with_name('training_log.tsv'), sep='\t', na_values='n/a')
    scored = log.dropna(subset=['val_score'])
    print('   validation scores logged:')
    print(scored[['step', *[c for c in log if c.startswith('val_')]]].to_string(index=False))
    print(
        f'   validation kept step {validation.get("ChosenStep")} (score '
        f'{validation.get("Score")}); the last is step {checkpoint["step"]}'
    )
    return {
        f'IGUANe, kept by validation (step {validation.get("ChosenStep")})': best.eval(),
        f'IGUANe, last (step {checkpoint["step"]})': last.eval(),
    }


def score_generators(images, held_out, nets, patch) -> None:
    groups = {
        'held out': [i for i in images if i.participant.subject in held_out],
        'all': images,
    }
    print('3. figures (travelling difference: change from raw, target <= -10 %; site effect:')
    print('   eta squared of the 24 regional means, target below raw; SSIM to input >= 0.9)')
    for group, members in groups.items():
        # the raw images and their figures are loaded once per group, then each generator runs
        score = HarmonizationScore(members, IguaneGenerator(), device='cpu', tile=(patch,) * 3)
        for name, generator in nets.items():
            score.generator = generator
            start = time.perf_counter()
            figures = score()
            seconds = (time.perf_counter() - start) / len(members)
            print(
                f'   {group:8s} {name}: travelling difference '
                f'{100 * (figures["travelling_difference"] - 1):+.1f} %, site effect '
                f'{score.raw_site_effect:.3f} -> {figures["site_effect"]:.3f}, SSIM min '
                f'{figures["ssim_min"]:.3f}; {seconds:.1f} s per volume with scoring'
            )


def combat_figures(out: Path, images, participants) -> None:
    inputs = [
        ModelInput(i.participant.subject, None, i.path, None) for i in images
    ]  # fmt: skip
    table = regional_table(inputs, participants, out)
    print(f'   ComBat, all: site effect {site_effect(table, "raw"):.3f}', end='')
    if combat_installed():
        table['combat'] = combat_harmonize(table, participants, 'siteA')
        wide = table.pivot_table(
            index='participant_id', columns='region', values=['raw', 'combat']
        )
        changes = []
        for first, second in travelling_pairs(participants):
            for column in ('raw', 'combat'):
                values = wide[column]
                difference = (
                    (values.loc[f'sub-{first}'] - values.loc[f'sub-{second}']).abs().mean()
                )
                changes.append((column, difference))
        raw = np.mean([d for c, d in changes if c == 'raw'])
        combat = np.mean([d for c, d in changes if c == 'combat'])
        print(
            f' -> {site_effect(table, "combat"):.3f}; travelling difference of regional means '
            f'{100 * (combat / raw - 1):+.1f} %'
        )
    else:
        print(' (ComBat not installed: pip install mrctprep[combat])')


def travelling_pairs(participants):
    by_traveller: dict[str, dict[str, str]] = {}
    for label, info in participants.items():
        by_traveller.setdefault(info.traveller, {})[info.site] = label
    return [
        (s['siteA'], s['siteB']) for s in by_traveller.values() if {'siteA', 'siteB'} <= set(s)
    ]


def ceiling(images, participants) -> None:
    data = {i.participant.subject: load_volume(i.path) for i in images}
    print('4. ceiling (siteB histogram-matched to its partner, then smoothed):')
    for label, smooth in (('contrast', False), ('contrast+noise', True)):
        changes, similarities = [], []
        for a, b in travelling_pairs(participants):
            mapped = matched_histogram(data[b], data[a])
            if smooth:
                mapped = brain_smoothed(mapped, 0.7)
            brain = (data[a] > 0) & (data[b] > 0)
            before = np.abs(data[a] - data[b])[brain].mean()
            changes.append(np.abs(data[a] - mapped)[brain].mean() / before - 1)
            similarities.append(structural_similarity(mapped, data[b], data[b] > 0))
        print(
            f'   {label}: travelling difference {100 * np.mean(changes):+.1f} %, SSIM min '
            f'{min(similarities):.3f}'
        )


def load_volume(path: Path) -> np.ndarray:
    return nb.load(path).get_fdata(dtype=np.float32)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('bids', type=Path)
    parser.add_argument('derivatives', type=Path, help='mr-preproc outputs of the dataset')
    parser.add_argument('--steps', type=int, default=1800)
    parser.add_argument('--patch', type=int, default=32, help='training crop size')
    parser.add_argument('--validate-every', type=int, default=300)
    parser.add_argument('--head-scale', type=float, default=1.0, help='--iguane-head-scale')
    parser.add_argument('--work', type=Path, help='work directory (default: OUT/../work-bench)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--evaluate-only', action='store_true')
    opts = parser.parse_args()
    os.environ.setdefault('OMP_NUM_THREADS', str(opts.threads))
    configure_torch_cpu(opts.threads)
    out = opts.derivatives
    work = opts.work or out.parent / 'work-bench'
    oom_case(opts.bids, out, work)
    if not opts.evaluate_only:
        train(opts.bids, out, work, opts)
    trained = trained_facts(out)
    nets = generators(out, work, trained)
    norm = sorted(out.glob(f'sub-*/anat/sub-*_{SPACE}_desc-norm_T1w.nii.gz'))
    labels = [re.match(r'sub-([^_]+)', p.name).group(1) for p in norm]
    participants = read_participant_sites(opts.bids, labels)
    images = [ValidationImage(p, participants[s]) for p, s in zip(norm, labels, strict=True)]
    held_out = set(trained['HeldOut'])
    score_generators(images, held_out, nets, opts.patch)
    combat_figures(out, images, participants)
    ceiling(images, participants)


if __name__ == '__main__':
    main()
