"""EfficientSCN learning on a CPU budget: train both stages from the command line on the training
CT, then segment it and the DICOM series, and print Dice per organ.

    python benchmarks/organ_seg_learning.py [--steps 600] [--width 8] [--spacing 4]
        [--learning-rate 1e-3] [--threads 2] [--localization-weights FILE.pt]
        [--no-augmentation] [--fine-tune-steps N [N ...]]

Training: ``ct/totalseg_example_ct_sm.nii.gz`` with ``ct/totalseg_example_seg.nii.gz``
(TotalSegmentator's predictions, not manual labels) mapped onto FLARE's organs, through
``group --train efficientscn`` (the localization net at the authors' size; a reduced SCN:
``--width`` filters, half in the spatial branch, at ``--spacing`` mm), both at
``--learning-rate``; with ``--localization-weights`` (the authors', imported) only the SCN.
Test: the DICOM series ``dicom/ct_abdomen_totalseg_j2k`` imported with
``mrctprep import``, against ``ct/totalseg_example_seg_dicom.nii.gz`` (liver and spleen are in
its field of view). Both through ``participant --pipelines organ-seg``. With
``--fine-tune-steps``, the SCN then continues in further ``group --train efficientscn`` runs
from its last weights (the fine-tuning option: Adam and the weight average start anew each
run), the localization kept.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

from mrctprep.imaging.organs import FLARE_ORGANS, flare_labels
from mrctprep.models.efficientscn import LOCALIZATION_MODEL as LOCALIZATION
from mrctprep.models.efficientscn import SEGMENTATION_MODEL as SEGMENTATION

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
TOTALSEG_NAMES = {1: 'spleen', 2: 'kidney_right', 3: 'kidney_left', 5: 'liver', 7: 'pancreas'}


def mrctprep(*args: object) -> None:
    subprocess.run([sys.executable, '-m', 'mrctprep', *map(str, args)], check=True)


def dice_per_organ(predicted: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    scores = {}
    for label, name, _, _ in FLARE_ORGANS:
        a, b = predicted == label, reference == label
        if b.any():
            scores[name] = 2 * float((a & b).sum()) / float(a.sum() + b.sum())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--localization-weights', type=Path)
    parser.add_argument('--learning-rate', type=float, default=1e-3)
    parser.add_argument('--steps', type=int, default=600)
    parser.add_argument('--width', type=int, default=8)
    parser.add_argument('--spacing', type=float, default=4.0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument(
        '--no-augmentation', action='store_true', help="train without upstream's augmentation"
    )
    parser.add_argument(
        '--fine-tune-steps',
        type=int,
        nargs='*',
        default=[],
        help='then continue the SCN in further runs of these many steps (--weights NAME=FILE)',
    )
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix='mrctprep-organs-'))
    bids = root / 'bids'
    (bids / 'sub-train' / 'anat').mkdir(parents=True)
    (bids / 'dataset_description.json').write_text('{"Name": "organs", "BIDSVersion": "1.10.0"}')
    (bids / 'participants.tsv').write_text('participant_id\nsub-train\n')
    shutil.copyfile(
        SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz',
        bids / 'sub-train' / 'anat' / 'sub-train_ct.nii.gz',
    )
    labels = root / 'labels'
    (labels / 'sub-train' / 'anat').mkdir(parents=True)
    reference = SHARED_DATA / 'ct' / 'totalseg_example_seg.nii.gz'
    shutil.copyfile(reference, labels / 'sub-train' / 'anat' / 'sub-train_dseg.nii.gz')
    rows = ['index\tname'] + [f'{index}\t{name}' for index, name in TOTALSEG_NAMES.items()]
    (labels / 'dseg.tsv').write_text('\n'.join(rows) + '\n')
    cases = root / 'cases'
    shutil.copytree(SHARED_DATA / 'dicom' / 'ct_abdomen_totalseg_j2k', cases / 'test')
    mrctprep('import', cases, bids)
    out, work = root / 'out', root / 'work'
    common = [
        '-w',
        work,
        '--skip-bids-validation',
        '--nprocs',
        '1',
        '--omp-nthreads',
        opts.threads,
    ]
    given = (
        ['--weights', f'efficientscn-localization={opts.localization_weights}']
        if opts.localization_weights
        else []
    )
    training = [
        '--train', 'efficientscn', '--train-labels', labels, '--network-width', opts.width,
        '--train-spacing', opts.spacing, '--learning-rate', opts.learning_rate,
        *(['--no-augmentation'] if opts.no_augmentation else []), *common,
    ]  # fmt: skip
    start = time.perf_counter()
    mrctprep(
        bids, out, 'group', *training, *given, '--steps', opts.steps,
        '--checkpoint-every', max(opts.steps // 4, 1),
    )  # fmt: skip
    models = out / 'models'
    localization = opts.localization_weights or models / LOCALIZATION / f'{LOCALIZATION}.pt'
    for steps in opts.fine_tune_steps:
        # the SCN continues from its last weights (a copy: the run writes that file anew)
        previous = root / 'scn-start.pt'
        shutil.copyfile(models / SEGMENTATION / f'{SEGMENTATION}.pt', previous)
        mrctprep(
            bids, out, 'group', *training, '--steps', steps,
            '--checkpoint-every', max(steps // 4, 1),
            '--weights', f'{LOCALIZATION}={localization}',
            '--weights', f'{SEGMENTATION}={previous}',
        )  # fmt: skip
    seconds = time.perf_counter() - start
    mrctprep(bids, out, 'participant', '--pipelines', 'organ-seg', *given, *common)
    stages = 'SCN' if opts.localization_weights else 'localization + SCN'
    print(
        f'{stages} (SCN {opts.width}/{max(opts.width // 2, 1)} filters at {opts.spacing} mm), '
        f'{opts.steps} steps each, the SCN fine-tuned {opts.fine_tune_steps} more, '
        f'at learning rate {opts.learning_rate:g}'
        f'{" without augmentation" if opts.no_augmentation else ""} in {seconds:.0f} s '
        f'({opts.threads} threads, training + start-up)'
    )
    for subject, truth in (
        ('train', reference),
        ('test', SHARED_DATA / 'ct' / 'totalseg_example_seg_dicom.nii.gz'),
    ):
        predicted = nb.load(
            out / f'sub-{subject}' / 'anat' / f'sub-{subject}_seg-organs_dseg.nii.gz'
        )
        truth_image = nb.load(truth)
        expected = flare_labels(np.asarray(truth_image.dataobj).astype(np.int64), TOTALSEG_NAMES)
        # the prediction is on the conformed (RAS+) grid; bring the reference there by axis flips
        ornt = nb.orientations.ornt_transform(
            nb.orientations.io_orientation(truth_image.affine),
            nb.orientations.io_orientation(predicted.affine),
        )
        expected = nb.orientations.apply_orientation(expected, ornt)
        scores = dice_per_organ(np.asarray(predicted.dataobj), expected)
        print(
            f'{subject}: '
            + '  '.join(f'{name} Dice {value:.3f}' for name, value in scores.items())
        )


if __name__ == '__main__':
    main()
