"""Group-level training of CTFlow (``group --train ctflow``) on paired reconstructions.

A training pair is two reconstructions of one acquisition: the images of a subject (and
session, acq-, run-) that differ only in their ``rec-`` entity, as ``mrctprep simulate-ct``
writes them or as a scanner exports them. ``--reference-rec`` names the target (default
``standard100``), ``--source-rec`` the conditions mapped onto it (default: every other
``rec-`` label). One model learns all source conditions together: the encoder sees the
kernel and dose in the image itself (noise texture, edge sharpness), and a site rarely has
enough pairs to train one model per condition.

Checkpoints go to ``<work>/train/ctflow/checkpoint.pt``; weights, card, training log and loss
plot to ``OUTPUT_DIR/models/ctflow/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from mrctprep.core.bids import REC_ENTITY, read_ct_condition
from mrctprep.core.config import ExecutionOptions, InputOptions, ModelOptions
from mrctprep.core.devices import configure_torch_cpu
from mrctprep.core.errors import InputError, NoReconstructionPairsError
from mrctprep.imaging.hounsfield import BODY_HU
from mrctprep.imaging.io import ImageReadError, load_image
from mrctprep.models.ctflow import HU_OFFSET, SIZES, WINDOW_HU, WINDOW_WIDTH, count_parameters
from mrctprep.models.ctflow_training import CTFlowSettings, CTFlowTraining, SlicePair
from mrctprep.models.training import (
    TrainingSettings,
    run_training,
    seed_everything,
    write_training_log,
)
from mrctprep.models.weights import ModelWeights, save_trained_weights, trained_weights_file

LOGGER = logging.getLogger(__name__)
MODEL_NAME = 'ctflow'
DEFAULT_REFERENCE_REC = 'standard100'
#: Slices whose reference has less body than this share (HU > -500) teach nothing.
MIN_BODY_SHARE = 0.1


@dataclass(frozen=True)
class ReconstructionPair:
    source: Path
    reference: Path
    source_rec: str


def find_reconstruction_pairs(
    bids_dir: Path,
    reference_rec: str,
    source_recs: tuple[str, ...] = (),
    participants: tuple[str, ...] = (),
) -> list[ReconstructionPair]:
    """Every (source, reference) pair of CT images that differ only in their ``rec-``."""
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(bids_dir.glob('sub-*/**/sub-*_ct.nii*')):
        match = REC_ENTITY.search(path.name)
        if match is None or path.name.startswith('.'):
            continue
        if participants and path.name.split('_')[0].removeprefix('sub-') not in participants:
            continue
        acquisition = str(path.parent / REC_ENTITY.sub('', path.name))
        groups.setdefault(acquisition, {})[match.group(1)] = path
    pairs = [
        ReconstructionPair(path, recs[reference_rec], rec)
        for recs in groups.values()
        if reference_rec in recs
        for rec, path in sorted(recs.items())
        if rec != reference_rec and (not source_recs or rec in source_recs)
    ]
    if not pairs:
        found = sorted({rec for recs in groups.values() for rec in recs})
        raise NoReconstructionPairsError(bids_dir, reference_rec, found)
    return pairs


def to_network(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu + HU_OFFSET) / WINDOW_WIDTH, 0.0, 1.0).astype(np.float32)


def load_slice_pairs(pair: ReconstructionPair, crop: int) -> list[SlicePair]:
    """The pair's axial slices in network values, each padded with air to at least ``crop``
    and to multiples of 8; refused when the two images are not on one grid."""
    try:
        source, reference = load_image(pair.source), load_image(pair.reference)
    except ImageReadError as exc:
        raise InputError(f'CTFlow training: {exc}') from exc
    if source.shape != reference.shape or not np.allclose(
        source.affine, reference.affine, atol=1e-3
    ):
        raise InputError(
            f'{pair.source.name} and {pair.reference.name} are not on one grid (shapes '
            f'{source.shape} and {reference.shape}); a training pair must be two '
            'reconstructions of one acquisition on the same voxels'
        )
    source_hu = np.asarray(nb.as_closest_canonical(source).dataobj, dtype=np.float32)
    reference_hu = np.asarray(nb.as_closest_canonical(reference).dataobj, dtype=np.float32)
    slices = []
    for index in range(source_hu.shape[2]):
        target = reference_hu[:, :, index]
        if np.mean(target > BODY_HU) < MIN_BODY_SHARE:
            continue
        slices.append(
            (
                _pad(to_network(source_hu[:, :, index]), crop),
                _pad(to_network(target), crop),
            )
        )
    return slices


def _pad(image: np.ndarray, crop: int) -> np.ndarray:
    sides = [max(crop, -(-side // 8) * 8) for side in image.shape]
    out = np.zeros(sides, dtype=np.float32)  # network 0: air and below
    out[: image.shape[0], : image.shape[1]] = image
    return out


def train_ctflow(
    *, inputs: InputOptions, models: ModelOptions, execution: ExecutionOptions
) -> ModelWeights:
    """Train CTFlow on the dataset's reconstruction pairs; write weights, card and log."""
    reference_rec = models.reference_rec or DEFAULT_REFERENCE_REC
    pairs = find_reconstruction_pairs(
        inputs.bids_dir, reference_rec, models.source_rec, inputs.participant_label
    )
    settings = _settings(models, execution)
    slices = [item for pair in pairs for item in load_slice_pairs(pair, settings.crop)]
    source_recs = sorted({pair.source_rec for pair in pairs})
    LOGGER.info(
        'training ctflow (%s size): %d slice pairs of %d image pairs, rec-%s -> rec-%s; '
        '%d steps (%d encoder pre-training) of %d crops of %d on %s',
        settings.size,
        len(slices),
        len(pairs),
        '/'.join(source_recs),
        reference_rec,
        settings.steps,
        settings.pretrain_steps,
        settings.batch,
        settings.crop,
        settings.device,
    )
    configure_torch_cpu(execution.omp_nthreads)
    seed_everything(execution.random_seed)
    task = CTFlowTraining(slices, settings)
    weights_file = trained_weights_file(inputs.output_dir, MODEL_NAME)
    history = run_training(
        task,
        TrainingSettings(
            name=MODEL_NAME,
            steps=settings.steps,
            checkpoint_file=execution.work_dir / 'train' / MODEL_NAME / 'checkpoint.pt',
            checkpoint_every=models.checkpoint_every,
            resume=models.resume,
            fingerprint=_fingerprint(pairs, settings),
        ),
    )
    write_training_log(
        history,
        weights_file.with_name('training_log.tsv'),
        weights_file.with_name('training_loss.png'),
    )
    trained = {
        'Dataset': str(inputs.bids_dir),
        'ReferenceRec': reference_rec,
        'SourceRecs': source_recs,
        'Conditions': _conditions(pairs, reference_rec),
        'ImagePairs': [
            {'Source': pair.source.name, 'Reference': pair.reference.name} for pair in pairs
        ],
        'SlicePairs': len(slices),
        'Size': settings.size,
        'SizeParameters': dict(SIZES[settings.size].as_dict()),
        'Parameters': count_parameters(task.model),
        'WindowHU': list(WINDOW_HU),
        'Steps': settings.steps,
        'EncoderPretrainingSteps': settings.pretrain_steps,
        'Crop': settings.crop,
        'Batch': settings.batch,
        'RandomSeed': settings.seed,
        'Device': settings.device,
    }
    state = {key: value.cpu() for key, value in task.model.state_dict().items()}
    return save_trained_weights(
        state,
        weights_file,
        name=MODEL_NAME,
        trained=trained,
        history=history,
        version=execution.version,
    )


def _conditions(pairs: list[ReconstructionPair], reference_rec: str) -> dict[str, dict[str, Any]]:
    """Each rec- label's kernel and dose facts, from the sidecar of its first image."""
    images = {pair.source_rec: pair.source for pair in reversed(pairs)}
    images[reference_rec] = pairs[0].reference
    return {rec: read_ct_condition(path) for rec, path in sorted(images.items())}


def _settings(models: ModelOptions, execution: ExecutionOptions) -> CTFlowSettings:
    crop = models.train_patch_size[0] if models.train_patch_size else CTFlowSettings.crop
    return CTFlowSettings(
        steps=models.steps or CTFlowSettings.steps,
        size=models.ctflow_size,
        crop=crop,
        batch=models.ctflow_batch,
        device=execution.device,
        seed=execution.random_seed,
    )


def _fingerprint(pairs: list[ReconstructionPair], settings: CTFlowSettings) -> str:
    """What a checkpoint must have been trained on to be resumed."""
    facts = {
        'pairs': [(str(pair.source), str(pair.reference)) for pair in pairs],
        'settings': repr(settings),
    }
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()
