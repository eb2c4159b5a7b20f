"""Group-level training of the sim2real CycleGAN (SyntheX / GENSYN): the dataset's DRRs (domain
A) to the look of real radiographs from a folder (domain B).

Checkpoints go to ``<work>/train/sim2real/checkpoint.pt``; the generator G_A, its card, the
training log, the loss plot and the validation panels to ``OUTPUT_DIR/models/sim2real/``,
where the drr pipeline's sim2real step finds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from mrctprep.core.config import ExecutionOptions, InputOptions, ModelOptions
from mrctprep.core.devices import configure_torch_cpu
from mrctprep.core.errors import InputError, TooFewRadiographsError
from mrctprep.imaging.radiographs import (
    Radiograph,
    iter_radiographs,
    radiograph_files,
)
from mrctprep.models.cyclegan_training import (
    DEFAULT_STEPS,
    CycleGANSettings,
    CycleGANTraining,
    TrainingImage,
    prepare,
)
from mrctprep.models.training import (
    TrainingSettings,
    run_training,
    seed_everything,
    write_training_log,
)
from mrctprep.models.weights import ModelWeights, save_trained_weights, trained_weights_file

LOGGER = logging.getLogger(__name__)
MODEL_NAME = 'sim2real'
#: every this many images of a domain one is held out for the validation panels and scores
HOLD_OUT_EVERY = 10
MAX_HELD_OUT = 4
MIN_TRAINING_IMAGES = 2


def find_drr_files(output_dir: Path) -> list[Path]:
    """The DRR views the drr pipeline wrote (``sub-*/**/*_drr.nii[.gz]``), not their sim2real
    images."""
    return sorted(
        path
        for pattern in ('sub-*/**/*_drr.nii.gz', 'sub-*/**/*_drr.nii')
        for path in output_dir.glob(pattern)
        if MODEL_NAME not in path.name
    )


def _load_domain(
    files: list[Path], settings: CycleGANSettings, domain: str, source: Path
) -> tuple[list[TrainingImage], list[Radiograph]]:
    """The readable images of ``files``: every 10th held out (at most 4) for the validation
    panels and scores, the others prepared for training as they are read."""
    training: list[TrainingImage] = []
    held_out: list[Radiograph] = []
    for _, image in iter_radiographs(files):
        readable = len(training) + len(held_out) + 1
        if readable % HOLD_OUT_EVERY == 0 and len(held_out) < MAX_HELD_OUT:
            held_out.append(image)
        else:
            training.append(prepare(image, settings))
    if len(training) < MIN_TRAINING_IMAGES:
        raise TooFewRadiographsError(domain, source, len(training), MIN_TRAINING_IMAGES)
    return training, held_out


def train_sim2real(
    *, inputs: InputOptions, models: ModelOptions, execution: ExecutionOptions
) -> ModelWeights:
    """Train the CycleGAN between the DRRs and the real radiographs; write G_A and its log."""
    if models.real_radiographs is None:
        raise InputError('the sim2real CycleGAN needs a folder of real radiographs (domain B)')
    drr_files = (
        radiograph_files(models.simulated_radiographs)
        if models.simulated_radiographs
        else find_drr_files(inputs.output_dir)
    )
    real_files = radiograph_files(models.real_radiographs)
    settings = _settings(models, execution)
    domain_a = models.simulated_radiographs or inputs.output_dir
    train_a, held_a = _load_domain(drr_files, settings, 'simulated', domain_a)
    train_b, held_b = _load_domain(real_files, settings, 'real', models.real_radiographs)
    if models.select_best and not held_b:
        LOGGER.warning(
            'best-generator selection: too few real radiographs to hold one out (%d '
            'needed); the last generator is kept',
            HOLD_OUT_EVERY,
        )
    weights_file = trained_weights_file(inputs.output_dir, MODEL_NAME)
    LOGGER.info(
        'training cyclegan: %d DRRs (A) -> %d real radiographs (B), %d + %d held out; %d steps '
        'of %d crops on %s, ngf %d',
        len(train_a),
        len(train_b),
        len(held_a),
        len(held_b),
        settings.steps,
        settings.crop_size,
        settings.device,
        settings.ngf,
    )
    configure_torch_cpu(execution.omp_nthreads)
    seed_everything(execution.random_seed)
    task = CycleGANTraining(
        train_a,
        train_b,
        settings,
        # without held-out DRRs the panels show two training images
        validation=(held_a or [image / 65535 for image in train_a[:2]], held_b),
        panel_dir=weights_file.parent / 'validation',
    )
    history = run_training(
        task,
        TrainingSettings(
            name='cyclegan',
            steps=settings.steps,
            checkpoint_file=execution.work_dir / 'train' / MODEL_NAME / 'checkpoint.pt',
            checkpoint_every=models.checkpoint_every,
            resume=models.resume,
            fingerprint=_fingerprint(drr_files, real_files, settings),
        ),
    )
    write_training_log(
        history,
        weights_file.with_name('training_log.tsv'),
        weights_file.with_name('training_loss.png'),
    )
    chosen = task.best if models.select_best and task.best else None
    state = chosen['G_A'] if chosen else {k: v.cpu() for k, v in task.G_A.state_dict().items()}
    trained = {
        'Dataset': str(inputs.bids_dir),
        'DomainA': str(models.simulated_radiographs or inputs.output_dir),
        'DomainB': str(models.real_radiographs),
        'Images': {
            'A': len(train_a),
            'B': len(train_b),
            'HeldOutA': len(held_a),
            'HeldOutB': len(held_b),
        },
        'Steps': settings.steps,
        'CropSize': settings.crop_size,
        'LoadSize': settings.load_size,
        'Preprocess': settings.preprocess,
        'NetworkWidth': {'ngf': settings.ngf, 'ndf': settings.ndf},
        'RandomSeed': settings.seed,
        'Device': settings.device,
        'Selected': (
            {'Step': chosen['step'], 'HistogramWassersteinToHeldOutB': round(chosen['score'], 5)}
            if chosen
            else 'last step'
        ),
    }
    return save_trained_weights(
        state,
        weights_file,
        name=MODEL_NAME,
        trained=trained,
        history=history,
        version=execution.version,
    )


def _settings(models: ModelOptions, execution: ExecutionOptions) -> CycleGANSettings:
    crop = models.train_patch_size[0] if models.train_patch_size else CycleGANSettings.crop_size
    return CycleGANSettings(
        steps=models.steps or DEFAULT_STEPS,
        crop_size=crop,
        # upstream's 552 for 512 crops, in proportion for other crops
        load_size=round(crop * CycleGANSettings.load_size / CycleGANSettings.crop_size),
        preprocess=models.train_preprocess,
        ngf=models.network_width,
        ndf=models.network_width,
        device=execution.device,
        seed=execution.random_seed,
        validation_every=models.validate_every or CycleGANSettings.validation_every,
    )


def _fingerprint(drr_files: list[Path], real_files: list[Path], settings: CycleGANSettings) -> str:
    """What a checkpoint must have been trained on to be resumed."""
    facts = {
        'A': [str(path) for path in drr_files],
        'B': [str(path) for path in real_files],
        'settings': repr(settings),
    }
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()
