"""Group-level training of the harmonization model (IGUANe) on the participant outputs.

Checkpoints go to ``<work>/train/<model>/checkpoint.pt`` (a resumed training continues there);
the weights, their card, the training log and the loss plot to ``OUTPUT_DIR/models/<model>/``,
where the participant level's ``mr-harmonize`` finds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nb

from mrctprep.core.config import ExecutionOptions, InputOptions, ModelOptions
from mrctprep.core.devices import configure_torch_cpu
from mrctprep.core.errors import InputError
from mrctprep.group.harmonization import ModelInput
from mrctprep.group.sites import ParticipantInfo
from mrctprep.group.validation import HarmonizationScore, ValidationImage, choose_held_out
from mrctprep.imaging.intensity import SIZE_MULTIPLE
from mrctprep.models.iguane_training import (
    DEFAULT_STEPS,
    IguaneTraining,
    IguaneTrainingSettings,
    TrainingImage,
    training_step_memory,
)
from mrctprep.models.memory import check_fits
from mrctprep.models.training import (
    ModelSelection,
    TrainingSettings,
    run_training,
    seed_everything,
    write_training_log,
)
from mrctprep.models.weights import ModelWeights, save_weights, trained_weights_file

LOGGER = logging.getLogger(__name__)

#: Steps between validations: the authors' every 5 epochs of 200 steps.
VALIDATE_EVERY = 1000


def train_harmonizer(
    model_inputs: Sequence[ModelInput],
    sites: Mapping[str, ParticipantInfo],
    reference_site: str,
    *,
    inputs: InputOptions,
    models: ModelOptions,
    execution: ExecutionOptions,
) -> ModelWeights:
    """Train IGUANe with ``reference_site`` as the target domain; write weights and log.

    The weights kept are those that scored best on the held-out participants (the last ones
    when none are held out); the checkpoint keeps the last state, for ``resume``.
    """
    subjects = sorted({item.subject for item in model_inputs})
    held_out = choose_held_out(
        {s: sites[s] for s in subjects}, models.validation_participants, execution.random_seed
    )
    images = [
        TrainingImage(path=item.norm, site=sites[item.subject].site, age=sites[item.subject].age)
        for item in model_inputs
        if item.subject not in held_out
    ]
    reference, sources = _split_by_site(images, reference_site, models.train or 'iguane')
    settings = _training_settings(models, execution)
    LOGGER.info(
        'training iguane: reference site %s (%d images), source sites %s, %d participant(s) '
        'held out; %d steps on %s, %s',
        reference_site,
        len(reference),
        ', '.join(f'{s} ({len(v)})' for s, v in sources.items()),
        len(held_out),
        settings.steps,
        settings.device,
        f'patches {settings.patch_size}' if settings.patch_size else 'whole volumes',
    )
    configure_torch_cpu(execution.omp_nthreads)
    _check_training_memory(settings, images, source_sites=len(sources))
    seed_everything(execution.random_seed)
    task = IguaneTraining(reference, sources, settings)
    validation = [
        ValidationImage(item.norm, sites[item.subject])
        for item in model_inputs
        if item.subject in held_out
    ]
    selection = _model_selection(
        task, validation, settings, models.validate_every or VALIDATE_EVERY
    )
    history = run_training(
        task,
        TrainingSettings(
            name='iguane',
            steps=settings.steps,
            checkpoint_file=execution.work_dir / 'train' / 'iguane' / 'checkpoint.pt',
            checkpoint_every=models.checkpoint_every,
            resume=models.resume,
            fingerprint=_fingerprint(images, validation, reference_site, settings),
        ),
        selection,
    )
    trained = {
        'Dataset': str(inputs.bids_dir),
        'ReferenceSite': reference_site,
        'Sites': {site: len(v) for site, v in [(reference_site, reference), *sources.items()]},
        'Steps': settings.steps,
        'PatchSize': list(settings.patch_size) if settings.patch_size else 'whole volume',
        'RandomSeed': settings.seed,
        'Device': settings.device,
        'HeadInitScale': settings.head_scale,
        'FinalLosses': {k: round(v, 5) for k, v in history[-1].items() if k.startswith('loss')},
        'TrainedWith': f'mrctprep {execution.version}',
        'Date': datetime.now(UTC).isoformat(timespec='seconds'),
    }
    trained['HeldOut'] = sorted(held_out)
    return _write_model(task, selection, history, trained, inputs.output_dir)


def _model_selection(
    task: IguaneTraining,
    validation: Sequence[ValidationImage],
    settings: IguaneTrainingSettings,
    every: int,
) -> ModelSelection | None:
    if not validation:
        LOGGER.info('no participants held out: the weights of the last step are kept')
        return None
    score = HarmonizationScore(
        validation, task.generator, device=settings.device, tile=settings.patch_size
    )
    LOGGER.info(
        'validation on %d held-out image(s) every %d steps (site effect before harmonization '
        '%.3g; %d travelling pair(s))',
        len(validation),
        every,
        score.raw_site_effect,
        len(score.pairs),
    )
    return ModelSelection(score, task.generator.state_dict, every)


def _write_model(
    task: IguaneTraining,
    selection: ModelSelection | None,
    history: list[dict[str, float]],
    trained: dict[str, object],
    output_dir: Path,
) -> ModelWeights:
    """The training log and plot, and the weights (the best, else the last) with their card."""
    weights_file = trained_weights_file(output_dir, 'iguane')
    write_training_log(
        history,
        weights_file.with_name('training_log.tsv'),
        weights_file.with_name('training_loss.png'),
    )
    state = {key: value.cpu() for key, value in task.generator.state_dict().items()}
    if selection is not None and selection.best_weights:
        state = selection.best_weights
        trained['Validation'] = {
            'Every': selection.every,
            'ChosenStep': selection.best_step,
            'Score': round(selection.best_score, 5),
            'Figures': {
                k.removeprefix('val_'): round(v, 5)
                for row in history
                if row['step'] == selection.best_step
                for k, v in row.items()
                if k.startswith('val_')
            },
        }
    weights = save_weights(state, weights_file, name='iguane', provenance={'trained': trained})
    LOGGER.info('iguane weights written to %s (SHA-256 %s)', weights.path, weights.sha256[:12])
    return weights


def _check_training_memory(
    settings: IguaneTrainingSettings, images: Sequence[TrainingImage], *, source_sites: int
) -> None:
    """Refuse, before any image is loaded, a training step that would not fit in memory."""
    shape = nb.Nifti1Image.from_filename(images[0].path).shape
    image_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    memory = training_step_memory(
        settings, image_shape=image_shape, image_count=len(images), source_sites=source_sites
    )
    check_fits(
        memory,
        voxels=math.prod(settings.patch_size or image_shape),
        device=settings.device,
        what='an iguane training step',
        patch_multiple=SIZE_MULTIPLE,
        patch_limit=min(image_shape),
    )


def _split_by_site(
    images: list[TrainingImage], reference_site: str, model: str
) -> tuple[list[TrainingImage], dict[str, list[TrainingImage]]]:
    """The reference site's images, and the other sites' by site; two sites at least."""
    counts = Counter(image.site for image in images)
    if len(counts) < 2:
        raise InputError(
            f'{model}: harmonization needs images from two sites or more; found '
            f'{", ".join(f"{site} ({n})" for site, n in counts.items())}'
        )
    reference = [image for image in images if image.site == reference_site]
    sources = {
        site: [i for i in images if i.site == site] for site in counts if site != reference_site
    }
    return reference, sources


def _training_settings(
    models: ModelOptions, execution: ExecutionOptions
) -> IguaneTrainingSettings:
    patch = models.train_patch_size
    sizes = patch * 3 if len(patch) == 1 else patch
    return IguaneTrainingSettings(
        steps=models.steps or DEFAULT_STEPS,
        patch_size=(sizes[0], sizes[1], sizes[2]) if patch else None,
        device=execution.device,
        seed=execution.random_seed,
        head_scale=models.iguane_head_scale,
    )


def _fingerprint(
    images: list[TrainingImage],
    validation: Sequence[ValidationImage],
    reference_site: str,
    settings: IguaneTrainingSettings,
) -> str:
    """What a checkpoint must have been trained on to be resumed."""
    facts = {
        'images': [[str(i.path), i.site, i.age] for i in images],
        'held_out': [str(image.path) for image in validation],
        'reference_site': reference_site,
        'patch_size': settings.patch_size,
        'seed': settings.seed,
        'steps': settings.steps,
        'head_scale': settings.head_scale,
    }
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()
