"""Group-level training of the harmonization model (IGUANe) on the participant outputs.

Checkpoints go to ``<work>/train/<model>/checkpoint.pt`` (a resumed training continues there);
the weights, their card, the training log and the loss plot to ``OUTPUT_DIR/models/<model>/``,
where the participant level's ``mr-harmonize`` finds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from mrctprep.core.config import ExecutionOptions, InputOptions, ModelOptions
from mrctprep.core.devices import set_torch_threads
from mrctprep.core.errors import InputError
from mrctprep.group.harmonization import ModelInput
from mrctprep.group.sites import ParticipantInfo
from mrctprep.models.iguane_training import (
    DEFAULT_STEPS,
    IguaneTraining,
    IguaneTrainingSettings,
    TrainingImage,
)
from mrctprep.models.training import (
    TrainingSettings,
    run_training,
    seed_everything,
    write_training_log,
)
from mrctprep.models.weights import ModelWeights, save_weights, trained_weights_file

LOGGER = logging.getLogger(__name__)


def train_harmonizer(
    model_inputs: Sequence[ModelInput],
    sites: Mapping[str, ParticipantInfo],
    reference_site: str,
    *,
    inputs: InputOptions,
    models: ModelOptions,
    execution: ExecutionOptions,
) -> ModelWeights:
    """Train IGUANe with ``reference_site`` as the target domain; write weights and log."""
    images = [
        TrainingImage(path=item.norm, site=sites[item.subject].site, age=sites[item.subject].age)
        for item in model_inputs
    ]
    reference, sources = _split_by_site(images, reference_site, models.train or 'iguane')
    settings = _training_settings(models, execution)
    LOGGER.info(
        'training iguane: reference site %s (%d images), source sites %s; %d steps on %s, %s',
        reference_site,
        len(reference),
        ', '.join(f'{s} ({len(v)})' for s, v in sources.items()),
        settings.steps,
        settings.device,
        f'patches {settings.patch_size}' if settings.patch_size else 'whole volumes',
    )
    set_torch_threads(execution.omp_nthreads)
    seed_everything(execution.random_seed)
    task = IguaneTraining(reference, sources, settings)
    history = run_training(
        task,
        TrainingSettings(
            name='iguane',
            steps=settings.steps,
            checkpoint_file=execution.work_dir / 'train' / 'iguane' / 'checkpoint.pt',
            checkpoint_every=models.checkpoint_every,
            resume=models.resume,
            fingerprint=_fingerprint(images, reference_site, settings),
        ),
    )
    weights_file = trained_weights_file(inputs.output_dir, 'iguane')
    write_training_log(
        history,
        weights_file.with_name('training_log.tsv'),
        weights_file.with_name('training_loss.png'),
    )
    trained = {
        'Dataset': str(inputs.bids_dir),
        'ReferenceSite': reference_site,
        'Sites': {site: len(v) for site, v in [(reference_site, reference), *sources.items()]},
        'Steps': settings.steps,
        'PatchSize': list(settings.patch_size) if settings.patch_size else 'whole volume',
        'RandomSeed': settings.seed,
        'Device': settings.device,
        'FinalLosses': {k: round(v, 5) for k, v in history[-1].items() if k != 'step'},
        'TrainedWith': f'mrctprep {execution.version}',
        'Date': datetime.now(UTC).isoformat(timespec='seconds'),
    }
    state = {key: value.cpu() for key, value in task.generator.state_dict().items()}
    weights = save_weights(state, weights_file, name='iguane', provenance={'trained': trained})
    LOGGER.info('iguane weights written to %s (SHA-256 %s)', weights.path, weights.sha256[:12])
    return weights


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
    )


def _fingerprint(
    images: list[TrainingImage], reference_site: str, settings: IguaneTrainingSettings
) -> str:
    """What a checkpoint must have been trained on to be resumed."""
    facts = {
        'images': [[str(i.path), i.site, i.age] for i in images],
        'reference_site': reference_site,
        'patch_size': settings.patch_size,
        'seed': settings.seed,
        'steps': settings.steps,
    }
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()
