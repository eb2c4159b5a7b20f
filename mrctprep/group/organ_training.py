"""Group-level training of EfficientSCN's SCN from label maps held as BIDS derivatives.

``--train-labels DIR``: ``sub-<l>[/ses-<s>]/anat/sub-<l>[_ses-<s>]_..._dseg.nii.gz`` aligned
with the raw CTs, and a ``dseg.tsv`` naming the labels (beside each map, same name, or one
``*dseg.tsv`` at DIR's root); names that mean a FLARE organ (``liver``, ``kidney_left``...)
become its label, the others background. The SCN trains on crops around the organs (+32 mm);
the localization stage is the imported one (``--weights efficientscn-localization=FILE``).
Weights, card, log and plot go to ``OUTPUT_DIR/models/efficientscn-segmentation/``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from mrctprep.core.config import ExecutionOptions, InputOptions, ModelOptions
from mrctprep.core.devices import set_torch_threads
from mrctprep.core.errors import InputError
from mrctprep.imaging.io import load_image
from mrctprep.imaging.organ_boxes import to_lps_volume, training_sample
from mrctprep.imaging.organs import flare_labels
from mrctprep.models.efficientscn import FLARE_LABELS, SpatialConfigurationNet
from mrctprep.models.efficientscn_training import ScnSample, ScnTraining
from mrctprep.models.training import (
    TrainingSettings,
    run_training,
    seed_everything,
    write_training_log,
)
from mrctprep.models.weights import ModelWeights, save_trained_weights, trained_weights_file

LOGGER = logging.getLogger(__name__)
MODEL_NAME = 'efficientscn-segmentation'
DEFAULT_STEPS = 100_000


def label_names(dseg_file: Path, labels_dir: Path) -> dict[int, str]:
    """The ``index -> name`` of a label map: its own ``.tsv``, else the one at the root."""
    table = dseg_file.with_name(dseg_file.name.replace('.nii.gz', '.tsv'))
    if not table.is_file():
        tables = sorted(labels_dir.glob('*dseg.tsv'))
        if not tables:
            raise InputError(
                f'{dseg_file}: no dseg.tsv beside it or at {labels_dir} naming its labels'
            )
        table = tables[0]
    with table.open() as stream:
        rows = list(csv.DictReader(stream, delimiter='\t'))
    if not rows or 'index' not in rows[0] or 'name' not in rows[0]:
        raise InputError(f'{table}: a dseg.tsv needs the columns index and name')
    return {int(row['index']): row['name'] for row in rows}


def training_pairs(bids_dir: Path, labels_dir: Path) -> list[tuple[Path, Path]]:
    """(raw CT, label map) pairs: each label map with the CT of the same subject/session."""
    pairs = []
    for dseg in sorted(labels_dir.glob('sub-*/**/*_dseg.nii.gz')):
        relative = dseg.parent.relative_to(labels_dir)
        prefix = (
            dseg.name.split('_')[0]
            if '_ses-' not in dseg.name
            else '_'.join(dseg.name.split('_')[:2])
        )
        cts = sorted((bids_dir / relative).glob(f'{prefix}_*ct.nii*'))
        if len(cts) != 1:
            raise InputError(
                f'{dseg}: {len(cts)} CTs of {prefix} in {bids_dir / relative}; one expected'
            )
        pairs.append((cts[0], dseg))
    if not pairs:
        raise InputError(f'{labels_dir}: no sub-*/**/*_dseg.nii.gz label maps in it')
    return pairs


def prepare_sample(
    ct_file: Path, dseg_file: Path, labels_dir: Path, spacing: float | None
) -> ScnSample:
    ct, dseg = load_image(ct_file), load_image(dseg_file)
    if dseg.shape[:3] != ct.shape[:3] or not np.allclose(dseg.affine, ct.affine, atol=1e-3):
        raise InputError(f'{dseg_file}: not on the grid of {ct_file} (shape or affine differ)')
    labels = flare_labels(
        np.asarray(dseg.dataobj).astype(np.int64), label_names(dseg_file, labels_dir)
    )
    if not labels.any():
        raise InputError(
            f'{dseg_file}: none of its labels names a FLARE organ '
            '(liver, kidneys, spleen, pancreas)'
        )
    volume = to_lps_volume(ct)
    lps_labels = to_lps_volume(nb.Nifti1Image(labels.astype(np.float32), ct.affine)).array
    image, crop = training_sample(
        volume, np.rint(lps_labels).astype(np.uint8), len(FLARE_LABELS), spacing
    )
    return ScnSample(torch.from_numpy(image.array), torch.from_numpy(crop), image.spacing)


def train_organ_segmentation(
    *, inputs: InputOptions, models: ModelOptions, execution: ExecutionOptions
) -> ModelWeights:
    """Train the SCN on every labelled CT; write its weights, card and training log."""
    if models.train_labels is None:
        raise InputError('the organ SCN trains on label maps, and no folder of them was given')
    if 'efficientscn-localization' not in models.weights:
        raise InputError(
            'the organ SCN trains beside a fixed localization stage, and no '
            'efficientscn-localization weights were given'
        )
    spacing = models.train_spacing
    pairs = training_pairs(inputs.bids_dir, models.train_labels)
    samples = [prepare_sample(ct, dseg, models.train_labels, spacing) for ct, dseg in pairs]
    steps = models.steps or DEFAULT_STEPS
    width = models.network_width
    LOGGER.info(
        'training efficientscn: %d labelled CTs, %d steps, SCN filters %d/%d on %s',
        len(samples),
        steps,
        width,
        max(width // 2, 1),
        execution.device,
    )
    set_torch_threads(execution.omp_nthreads)
    seed_everything(execution.random_seed)
    network = SpatialConfigurationNet(filters=width, spatial_filters=max(width // 2, 1))
    task = ScnTraining(network, samples, device=execution.device, seed=execution.random_seed)
    fingerprint = hashlib.sha256(
        json.dumps([[str(a), str(b)] for a, b in pairs] + [steps, width, spacing]).encode()
    ).hexdigest()
    history = run_training(
        task,
        TrainingSettings(
            name='efficientscn',
            steps=steps,
            checkpoint_file=execution.work_dir / 'train' / MODEL_NAME / 'checkpoint.pt',
            checkpoint_every=models.checkpoint_every,
            resume=models.resume,
            fingerprint=fingerprint,
        ),
    )
    weights_file = trained_weights_file(inputs.output_dir, MODEL_NAME)
    write_training_log(
        history,
        weights_file.with_name('training_log.tsv'),
        weights_file.with_name('training_loss.png'),
    )
    trained = {
        'Dataset': str(inputs.bids_dir),
        'Labels': str(models.train_labels),
        'Images': len(samples),
        'Steps': steps,
        'NetworkWidth': {'filters': width, 'spatial_filters': max(width // 2, 1)},
        # the grid inference must use: only when the user chose one (else upstream's rule)
        'SpacingMM': [round(sample.spacing_mm, 4) for sample in samples] if spacing else None,
        'Weights': 'exponential moving average (decay 0.999)',
        'RandomSeed': execution.random_seed,
        'Device': execution.device,
    }
    state = {k: v.cpu() for k, v in task.average.state_dict().items()}
    return save_trained_weights(
        state,
        weights_file,
        name=MODEL_NAME,
        trained=trained,
        history=history,
        version=execution.version,
    )
