"""Group-level training of EfficientSCN's two stages from label maps held as BIDS derivatives.

``--train-labels DIR``: ``sub-<l>[/ses-<s>]/anat/sub-<l>[_ses-<s>]_..._dseg.nii.gz`` aligned
with the raw CTs, and a ``dseg.tsv`` naming the labels (beside each map, same name, or one
``*dseg.tsv`` at DIR's root); names that mean a FLARE organ (``liver``, ``kidney_left``...)
become its label, the others background. The localization net trains on whole scans at 6 mm
with the organs merged, unless its weights are given (then they are kept, or trained further
when asked); the SCN trains on crops around the organs (+32 mm), from given weights when there
are some. Each stage's weights, card, log and plot go to ``OUTPUT_DIR/models/<its name>/``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import NamedTuple

import nibabel as nb
import numpy as np
import torch

from mrctprep.core.config import ExecutionOptions, InputOptions, ModelOptions
from mrctprep.core.devices import configure_torch_cpu
from mrctprep.core.errors import InputError
from mrctprep.imaging.io import load_image
from mrctprep.imaging.organ_boxes import (
    localization_training_sample,
    to_lps_volume,
    training_samples,
)
from mrctprep.imaging.organs import flare_labels
from mrctprep.models.efficientscn import (
    FLARE_LABELS,
    LOCALIZATION_MODEL,
    SEGMENTATION_MODEL,
    LocalizationNet,
    SpatialConfigurationNet,
)
from mrctprep.models.efficientscn_inference import scn_from_state_dict
from mrctprep.models.efficientscn_training import (
    LOCALIZATION_STAGE,
    SCN_STAGE,
    Stage,
    StageTraining,
    TrainingSample,
)
from mrctprep.models.training import (
    TrainingSettings,
    run_training,
    seed_everything,
    write_training_log,
)
from mrctprep.models.weights import ModelWeights, save_trained_weights, trained_weights_file

LOGGER = logging.getLogger(__name__)
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


class StageSamples(NamedTuple):
    """One labelled CT as each stage trains on it (the localization's only when it trains)."""

    localization: TrainingSample | None
    segmentation: list[TrainingSample]


def prepare_samples(
    ct_file: Path,
    dseg_file: Path,
    labels_dir: Path,
    spacing: float | None,
    *,
    localization: bool,
) -> StageSamples:
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
    lps_float = to_lps_volume(nb.Nifti1Image(labels.astype(np.float32), ct.affine)).array
    lps_labels = np.rint(lps_float).astype(np.uint8)
    scn = [
        TrainingSample(torch.from_numpy(image.array), torch.from_numpy(crop), (image.spacing,) * 3)
        for image, crop in training_samples(volume, lps_labels, len(FLARE_LABELS), spacing)
    ]
    if not localization:
        return StageSamples(None, scn)
    whole, merged = localization_training_sample(volume, lps_labels)
    return StageSamples(
        TrainingSample(torch.from_numpy(whole.array), torch.from_numpy(merged), whole.spacing), scn
    )


def train_organ_segmentation(
    *, inputs: InputOptions, models: ModelOptions, execution: ExecutionOptions
) -> ModelWeights:
    """Train the stages that need it on every labelled CT; the SCN's weights are returned."""
    if models.train_labels is None:
        raise InputError(
            'organ segmentation trains on label maps, and no folder of them was given'
        )
    pairs = training_pairs(inputs.bids_dir, models.train_labels)
    given = models.weights.get(LOCALIZATION_MODEL)
    train_localization = not given or models.fine_tune_localization
    samples = [
        prepare_samples(
            ct, dseg, models.train_labels, models.train_spacing, localization=train_localization
        )
        for ct, dseg in pairs
    ]
    configure_torch_cpu(execution.omp_nthreads)
    if train_localization:
        localization = LocalizationNet()
        if given:
            localization.load_state_dict(torch.load(given, map_location='cpu', weights_only=True))
        _train_stage(
            localization,
            [s.localization for s in samples if s.localization is not None],
            LOCALIZATION_STAGE,
            pairs,
            {'FineTunedFrom': given} if given else {},
            inputs=inputs,
            models=models,
            execution=execution,
        )
    else:
        LOGGER.info('localization stage: the given weights %s, kept as they are', given)
    width = models.network_width
    network = SpatialConfigurationNet(filters=width, spatial_filters=max(width // 2, 1))
    facts: dict[str, object] = {}
    if start := models.weights.get(SEGMENTATION_MODEL):
        network = scn_from_state_dict(torch.load(start, map_location='cpu', weights_only=True))
        facts['FineTunedFrom'] = start
    facts['NetworkWidth'] = {
        'filters': int(network.local_prediction.weight.shape[1]),
        'spatial_filters': int(network.state_dict()['spatial_unets.0.1.weight'].shape[1]),
    }
    if models.train_spacing:  # the grid inference must use (else upstream's rule)
        facts['SpacingMM'] = sorted(
            {round(crop.spacing_mm[0], 4) for ct in samples for crop in ct.segmentation}
        )
    return _train_stage(
        network,
        [crop for ct in samples for crop in ct.segmentation],
        SCN_STAGE,
        pairs,
        facts,
        inputs=inputs,
        models=models,
        execution=execution,
    )


def _train_stage(
    network: torch.nn.Module,
    samples: list[TrainingSample],
    stage: Stage,
    pairs: list[tuple[Path, Path]],
    facts: dict[str, object],
    *,
    inputs: InputOptions,
    models: ModelOptions,
    execution: ExecutionOptions,
) -> ModelWeights:
    """One stage through the shared loop; its weights (the average), card, log and plot."""
    name = stage.weights_name
    steps = models.steps or DEFAULT_STEPS
    rate = models.learning_rate or stage.learning_rate
    LOGGER.info(
        'training %s: %d crops of %d labelled CTs, %d steps, learning rate %g on %s',
        name,
        len(samples),
        len(pairs),
        steps,
        rate,
        execution.device,
    )
    seed_everything(execution.random_seed)
    task = StageTraining(
        network,
        samples,
        stage,
        device=execution.device,
        seed=execution.random_seed,
        augment=models.train_augmentation,
        learning_rate=rate,
    )
    fingerprint = hashlib.sha256(
        json.dumps(
            [[str(a), str(b)] for a, b in pairs]
            + [steps, rate, models.train_spacing, models.train_augmentation]
            + [str(v) for v in facts.values()]
        ).encode()
    ).hexdigest()
    history = run_training(
        task,
        TrainingSettings(
            name=name,
            steps=steps,
            checkpoint_file=execution.work_dir / 'train' / name / 'checkpoint.pt',
            checkpoint_every=models.checkpoint_every,
            resume=models.resume,
            fingerprint=fingerprint,
        ),
    )
    weights_file = trained_weights_file(inputs.output_dir, name)
    write_training_log(
        history,
        weights_file.with_name('training_log.tsv'),
        weights_file.with_name('training_loss.png'),
    )
    trained = {
        'Dataset': str(inputs.bids_dir),
        'Labels': str(models.train_labels),
        'Images': len(pairs),
        'Steps': steps,
        'LearningRate': rate,
        'Augmentation': 'upstream' if models.train_augmentation else 'none',
        **facts,
        'Weights': 'exponential moving average (decay 0.999, ramped as TensorFlow num_updates)',
        'RandomSeed': execution.random_seed,
        'Device': execution.device,
    }
    state = {k: v.cpu() for k, v in task.average.state_dict().items()}
    return save_trained_weights(
        state, weights_file, name=name, trained=trained, history=history,
        version=execution.version,
    )  # fmt: skip
