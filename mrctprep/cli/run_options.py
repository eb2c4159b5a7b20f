"""The BIDS App's options, one function per section of ``--help`` (and of the run's
configuration: each option's ``dest`` is the name of the field it fills, see
:meth:`mrctprep.core.config.RunConfig.from_options`), and the checks argparse cannot make."""

from __future__ import annotations

import argparse

from mrctprep import __version__
from mrctprep.cli.option_types import (
    absolute_path,
    available_cpus,
    device,
    drr_angles,
    drr_view_grid,
    existing_file,
    non_negative_float,
    non_negative_int,
    parse_memory_gb,
    positive_float,
    positive_int,
    weights_option,
)
from mrctprep.core.config import ModelOptions
from mrctprep.imaging.drr.presets import OUTPUTS, PRESETS, resolve_drr_settings
from mrctprep.imaging.drr.tables import SPECTRA
from mrctprep.imaging.intensity import SIZE_MULTIPLE
from mrctprep.imaging.skullstrip import SKULL_STRIP_METHODS
from mrctprep.models.weights import WEIGHTS_DIR_ENV, model_names, user_cache_dir
from mrctprep.workflows.pipelines import DEFAULT_PIPELINES, PIPELINES, describe_pipelines

#: ``--train`` names: the group level's trainings (sim2real is cyclegan's model name)
TRAINABLE_MODELS = ('iguane', 'cyclegan', 'sim2real', 'efficientscn', 'ctflow')


class _ListPipelinesAction(argparse.Action):
    """Print the pipelines and exit, like ``--version``: no positional arguments needed."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(describe_pipelines())
        parser.exit()


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of ``mrctprep BIDS_DIR OUTPUT_DIR {participant,group}``, by section."""
    parser.add_argument(
        'bids_dir', type=absolute_path, help='the root of the BIDS dataset (read only)'
    )
    parser.add_argument('output_dir', type=absolute_path, help='where the derivatives are written')
    parser.add_argument(
        'analysis_level', choices=['participant', 'group'], help='processing stage'
    )
    parser.add_argument('--version', action='version', version=f'mrctprep {__version__}')
    parser.add_argument(
        '--list-pipelines', action=_ListPipelinesAction, help='list the pipelines and exit'
    )
    for add_section in (
        _add_bids_options,
        _add_workflow_options,
        _add_resource_options,
        _add_mr_options,
        _add_drr_options,
        _add_superres_options,
        _add_model_options,
        _add_sim2real_options,
        _add_organ_training_options,
        _add_ctflow_training_options,
        _add_ct_harmonization_options,
    ):
        add_section(parser)


def _add_bids_options(parser: argparse.ArgumentParser) -> None:
    """Which data: the dataset, subjects, sessions and files."""
    bids = parser.add_argument_group('BIDS input')
    bids.add_argument(
        '--participant-label',
        '--participant_label',
        nargs='+',
        default=[],
        metavar='LABEL',
        help='subjects to process (with or without "sub-"); default: all',
    )
    bids.add_argument(
        '--session-label',
        '--session_label',
        '--session-id',
        nargs='+',
        default=[],
        metavar='LABEL',
        help='sessions to process (with or without "ses-"); default: all',
    )
    bids.add_argument(
        '--bids-filter-file',
        type=existing_file,
        metavar='FILE',
        help='JSON {query: {entity: value}} refining the queries t1w, t2w, flair, pdw, ct '
        '(null = entity absent, "*" = any)',
    )
    bids.add_argument(
        '--bids-database-dir',
        type=absolute_path,
        metavar='DIR',
        help='keep the pybids index here and reuse it (default: a fresh one per run, in the '
        'work directory)',
    )
    bids.add_argument(
        '--skip-bids-validation',
        '--skip_bids_validation',
        '--skip_bids_validator',
        action='store_true',
        help='do not run the BIDS validator (bids-validator-deno) before indexing',
    )


def _add_resource_options(parser: argparse.ArgumentParser) -> None:
    """CPUs, memory, scheduler and torch device."""
    perf = parser.add_argument_group('Resources')
    cpus = available_cpus()
    perf.add_argument(
        '--nprocs',
        '--nthreads',
        '--n_cpus',
        '--n-cpus',
        type=positive_int,
        default=cpus,
        metavar='N',
        help='CPU slots for the MultiProc plugin (default: the CPUs this process may use, '
        'here %(default)s)',
    )
    perf.add_argument(
        '--omp-nthreads',
        type=positive_int,
        default=None,
        metavar='N',
        help='threads per process (torch, ITK); default: min(nprocs - 1, 8), at least 1',
    )
    perf.add_argument(
        '--mem',
        '--mem-mb',
        '--mem_mb',
        type=parse_memory_gb,
        dest='mem_gb',
        metavar='SIZE',
        help='memory limit for scheduling, e.g. 16G or 16000M (a bare number is MB)',
    )
    perf.add_argument(
        '--use-plugin',
        type=existing_file,
        metavar='FILE',
        help='YAML {plugin: MultiProc|Linear|SLURM|SGE|PBS|…, plugin_args: {…}}; see docs/hpc.md',
    )
    perf.add_argument(
        '--device',
        type=device,
        default='auto',
        help='torch device for model nodes: auto, cpu, cuda or cuda:N',
    )


def _add_mr_options(parser: argparse.ArgumentParser) -> None:
    """mr-preproc (and mr-harmonize)."""
    mr = parser.add_argument_group('MR preprocessing (mr-preproc)')
    mr.add_argument(
        '--skull-strip',
        choices=SKULL_STRIP_METHODS,
        default='hdbet',
        help='hdbet: HD-BET, 1 network on CPU, 5 networks with mirroring on a GPU; '
        'hdbet-accurate: 5 networks with mirroring anywhere; deepbet: faster on CPU; '
        'none: the input is already skull-stripped',
    )
    mr.add_argument(
        '--template',
        type=existing_file,
        metavar='FILE',
        help="brain template to register to (default: nilearn's MNI152 ICBM 2009a symmetric "
        '1 mm brain); its file name becomes the space- label',
    )


def _add_drr_options(parser: argparse.ArgumentParser) -> None:
    """drr: the C-arm preset and what overrides it."""
    drr = parser.add_argument_group('DRR (drr)')
    drr.add_argument(
        '--drr-preset',
        choices=sorted(PRESETS),
        default='deepdrr',
        help="deepdrr: DeepDRR's default C-arm (SDD 1020 mm, source-isocentre 530 mm, 1536 px "
        'of 0.194 mm, one PA view); gensyn-center: the GENSYN thesis centre view (2500 px of '
        '0.2 mm, isocentre 750 mm below the CT centre); gensyn-angled: its 20 angled views '
        '(SDD = source-isocentre = 2000 mm, 2500 px of 0.18 mm)',
    )
    views = drr.add_mutually_exclusive_group()
    views.add_argument(
        '--drr-angles',
        type=drr_angles,
        metavar='"A,B;A,B;..."',
        help='views as (orbital LAO/RAO, angulation CRA/CAU) pairs in degrees about the '
        "isocentre; unset: the preset's views",
    )
    views.add_argument(
        '--drr-view-grid',
        dest='drr_grid',
        type=drr_view_grid,
        metavar='START:STOP:STEP',
        help='views at every (orbital, angulation) pair of START..STOP by STEP degrees',
    )
    drr.add_argument(
        '--drr-kvp',
        type=int,
        choices=sorted(SPECTRA),
        help="tube voltage of the spectrum; unset: the preset's (90)",
    )
    drr.add_argument(
        '--drr-output',
        choices=OUTPUTS,
        help="neglog: DeepDRR's normalised -log image (the presets' choice); line-integral: "
        'the line integral of attenuation; intensity: energy reaching each pixel (keV per '
        "photon); unset: the preset's",
    )
    _add_carm_overrides(drr)

    drr.add_argument(
        '--drr-sim2real',
        action='store_true',
        help='drr: also map each view with the sim2real generator (--weights sim2real=FILE or '
        'group --train cyclegan): desc-<view>sim2real_drr images and a DRR | sim2real sheet',
    )


def _add_carm_overrides(drr: argparse._ArgumentGroup) -> None:
    """The C-arm's geometry and noise, each overriding the preset's value."""
    drr.add_argument(
        '--drr-detector',
        dest='drr_detector_pixels',
        type=positive_int,
        metavar='N',
        help="detector of N x N pixels; unset: the preset's",
    )
    drr.add_argument(
        '--drr-pixel-size',
        dest='drr_pixel_size_mm',
        type=positive_float,
        metavar='MM',
        help="detector pixel spacing; unset: the preset's",
    )
    drr.add_argument(
        '--drr-sdd',
        dest='drr_source_to_detector_mm',
        type=positive_float,
        metavar='MM',
        help="source-to-detector distance; unset: the preset's",
    )
    drr.add_argument(
        '--drr-sid',
        dest='drr_source_to_isocentre_mm',
        type=positive_float,
        metavar='MM',
        help="source-to-isocentre distance; unset: the preset's",
    )
    drr.add_argument(
        '--drr-noise',
        dest='drr_noise_photons',
        type=positive_int,
        metavar='PHOTONS',
        help='Poisson noise for PHOTONS photons per pixel; unset: no noise',
    )


def _add_superres_options(parser: argparse.ArgumentParser) -> None:
    """superres: grid and model."""
    superres = parser.add_argument_group('Super-resolution (superres)')
    superres.add_argument(
        '--superres-voxel-size',
        type=positive_float,
        default=1.0,
        metavar='MM',
        help='isotropic voxel size of the super-resolved images',
    )
    superres.add_argument(
        '--superres-method',
        choices=('unires', 'linear'),
        default='unires',
        help="unires: UniRes's model (joint total variation, ADMM); linear: co-register and "
        "reslice trilinearly only (UniRes's --linear)",
    )
    superres.add_argument(
        '--superres-common-grid',
        action='store_true',
        help="UniRes's --common_output: the template's field of view after rigid alignment to "
        'it, sizes 2*2^n or 3*2^n (at most 256), the same grid for every subject',
    )
    superres.add_argument(
        '--superres-max-iter',
        type=positive_int,
        metavar='N',
        help='cap on ADMM iterations (default 512; the run usually stops earlier, converged)',
    )
    superres.add_argument(
        '--superres-interleaved',
        action='store_true',
        help="UniRes's --scale: per-scan correction of interleaved-acquisition intensity "
        'differences between odd and even slices; MR only',
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Learned models: weights, and training at the group level."""
    models = parser.add_argument_group('Models (mr-harmonize; training at the group level)')
    models.add_argument(
        '--weights',
        action='append',
        type=weights_option,
        metavar='NAME=FILE',
        help=f'weights of model NAME ({", ".join(model_names())}): a .pt with its .json card '
        f'beside it. Default: OUTPUT_DIR/models/NAME/NAME.pt, then ${WEIGHTS_DIR_ENV}/NAME.pt, '
        f'then {user_cache_dir()}/NAME.pt',
    )
    models.add_argument(
        '--train',
        choices=TRAINABLE_MODELS,
        metavar='NAME',
        help='group level: train model NAME on the participant outputs (iguane: on mr-preproc '
        "outputs, sites from participants.tsv's site column or the sidecars' scanner; "
        'cyclegan: the sim2real CycleGAN from the drr outputs to --real-radiographs; '
        'efficientscn: the organ SCN from --train-labels; ctflow: from rec- pairs of the CTs); '
        'writes OUTPUT_DIR/models/NAME/ (cyclegan: models/sim2real/)',
    )
    models.add_argument(
        '--steps',
        type=positive_int,
        metavar='N',
        help='training steps (iguane: each step visits every source site; default 20000 = '
        "IGUANe's 100 epochs x 200 steps)",
    )
    models.add_argument(
        '--train-patch-size',
        type=positive_int,
        nargs='+',
        metavar='N',
        help='train on random crops of N (or NX NY NZ) voxels, multiples of 16, instead of '
        'whole volumes: the networks are fully convolutional; 64 makes CPU training practical',
    )
    models.add_argument(
        '--checkpoint-every',
        type=positive_int,
        default=200,
        metavar='N',
        help='save a checkpoint (in the work directory) every N steps',
    )
    models.add_argument(
        '--resume',
        action='store_true',
        help='continue the last training from its checkpoint (same -w, data and settings), '
        'exactly as if it had not stopped',
    )
    models.add_argument(
        '--reference-site',
        metavar='SITE',
        help='harmonization target site (default: the site with the most participants)',
    )
    models.add_argument(
        '--validation-participants',
        type=non_negative_int,
        metavar='N',
        help='hold N participants of every site out of training and keep the weights that score '
        'best on them (default: a quarter of each site, at least 2, none when a site has fewer '
        'than 6; 0: keep the last weights)',
    )
    models.add_argument(
        '--validate-every',
        type=positive_int,
        metavar='N',
        help='score the weights on held-out data every N steps (default: iguane 1000, its '
        "authors' 5 epochs, on the held-out participants; cyclegan 500, a saved panel of "
        'held-out DRRs mapped and mapped back, and their score)',
    )
    models.add_argument(
        '--iguane-head-scale',
        type=positive_float,
        default=1.0,
        metavar='S',
        help="iguane: multiply the generators' initial 1x1 output heads by S (default 1, "
        "upstream's Glorot start, a residual of about +-350 to undo first); 0.1 starts near "
        'the identity, for short (CPU) trainings',
    )


def _add_organ_training_options(parser: argparse.ArgumentParser) -> None:
    """EfficientSCN's SCN: its labelled CTs (``group --train efficientscn``)."""
    organs = parser.add_argument_group('Organ segmentation training (organ-seg)')
    organs.add_argument(
        '--train-labels',
        type=absolute_path,
        metavar='DIR',
        help='BIDS-Derivatives label maps aligned with the CTs (sub-<l>/anat/*_dseg.nii.gz, '
        'a dseg.tsv naming the labels beside each or at DIR); names such as liver, kidney_left, '
        'spleen, pancreas map onto the FLARE organs, other labels to background',
    )
    organs.add_argument(
        '--train-spacing',
        type=float,
        metavar='MM',
        help="the SCN training grid's spacing (default: upstream's 2 mm, coarser when the "
        'organs do not fit 160x128x160); 6 makes CPU training of a small SCN practical',
    )
    organs.add_argument(
        '--fine-tune-localization',
        action='store_true',
        help='train the localization weights given with --weights efficientscn-localization=FILE '
        'further on the labels (default: keep them and train the SCN only; without them both '
        'stages train from scratch)',
    )
    organs.add_argument(
        '--learning-rate',
        type=float,
        metavar='LR',
        help="Adam's learning rate of both stages (default: the authors' 1e-5 localization, "
        '1e-4 SCN, made for 100,000 steps; 1e-3 fits a few CTs in a CPU budget)',
    )
    organs.add_argument(
        '--no-augmentation',
        dest='train_augmentation',
        action='store_false',
        help="train both stages without upstream's spatial and intensity augmentation: fits "
        'the given CTs in far fewer steps, generalises less (default: augment)',
    )


def _add_sim2real_options(parser: argparse.ArgumentParser) -> None:
    """The sim2real CycleGAN: training data and settings (``group --train cyclegan``)."""
    sim2real = parser.add_argument_group('Sim2real CycleGAN training')
    sim2real.add_argument(
        '--real-radiographs',
        type=absolute_path,
        metavar='DIR',
        help='domain B: a folder of real radiographs (DICOM CR/DX, PNG or JPEG of any bit '
        'depth; unreadable files are skipped with a warning)',
    )
    sim2real.add_argument(
        '--simulated-radiographs',
        type=absolute_path,
        metavar='DIR',
        help="domain A: a folder of DRR images instead of the drr pipeline's outputs",
    )
    sim2real.add_argument(
        '--train-preprocess',
        choices=('resize_and_crop', 'crop'),
        default='resize_and_crop',
        help="resize_and_crop: upstream's resize to 552 (crop x 552/512), random crop, flip; "
        'crop: random crops of the images as they are, and flips',
    )
    sim2real.add_argument(
        '--network-width',
        type=positive_int,
        default=64,
        metavar='NGF',
        help="filters of the generator's and the discriminator's first layers (ngf = ndf; "
        'upstream: 64; 8 or 16 train on a CPU)',
    )
    sim2real.add_argument(
        '--select-best',
        action='store_true',
        help='keep the generator whose held-out images came closest to the held-out real '
        'radiographs (intensity histograms), not the last one',
    )


def _add_ctflow_training_options(parser: argparse.ArgumentParser) -> None:
    """CTFlow: which reconstructions pair up, and its size (``group --train ctflow``)."""
    ctflow = parser.add_argument_group('CTFlow training')
    ctflow.add_argument(
        '--reference-rec',
        metavar='LABEL',
        help='the rec- label of the reconstruction to harmonize onto (default: standard100, '
        "simulate-ct's full-dose standard kernel)",
    )
    ctflow.add_argument(
        '--source-rec',
        nargs='+',
        metavar='LABEL',
        help='the rec- labels mapped onto the reference (default: every other rec- label of '
        'the same acquisitions)',
    )
    ctflow.add_argument(
        '--ctflow-size',
        choices=('cpu', 'paper'),
        default='cpu',
        help='paper: nb 14, nf 64, K 16 (29.2 M parameters, for GPUs); cpu: nb 4, nf 32, K 4',
    )
    ctflow.add_argument(
        '--ctflow-batch',
        type=positive_int,
        default=16,
        metavar='N',
        help='crops per training step (upstream: 16)',
    )


def _add_ct_harmonization_options(parser: argparse.ArgumentParser) -> None:
    """CTFlow applied: its temperature and samples (``--pipelines ct-harmonize``)."""
    harmonize = parser.add_argument_group('CT harmonization (ct-harmonize)')
    harmonize.add_argument(
        '--ctflow-tau',
        type=non_negative_float,
        default=0.8,
        metavar='TAU',
        help="sampling temperature (upstream's 0.8; 0 gives the mean-like output)",
    )
    harmonize.add_argument(
        '--ctflow-samples',
        type=positive_int,
        default=1,
        metavar='N',
        help='samples per slice: their mean is the harmonized CT and, from 2 on, their SD '
        'the uncertainty map',
    )


def _add_workflow_options(parser: argparse.ArgumentParser) -> None:
    """Pipelines, work directory and what to run or write."""
    flow = parser.add_argument_group('Workflow')
    flow.add_argument(
        '--pipelines',
        nargs='+',
        choices=sorted(PIPELINES),
        default=DEFAULT_PIPELINES,
        metavar='NAME',
        help=f'pipelines to run ({", ".join(sorted(PIPELINES))}); see --list-pipelines',
    )
    flow.add_argument(
        '-w',
        '--work-dir',
        type=absolute_path,
        default='work',
        metavar='DIR',
        help='cache of intermediate results; rerun with the same one to resume',
    )
    flow.add_argument('--write-graph', action='store_true', help='draw the workflow (.dot/.svg)')
    flow.add_argument(
        '--dry-run', action='store_true', help='build and draw the workflow, run nothing'
    )
    flow.add_argument(
        '--stop-on-first-crash',
        action='store_true',
        help='stop at the first failing node (default: finish the rest, report every failure)',
    )
    flow.add_argument(
        '--boilerplate-only',
        '--boilerplate_only',
        action='store_true',
        help='write the methods text (logs/CITATION.md) and exit',
    )
    flow.add_argument(
        '--reports-only',
        action='store_true',
        help='write the reports (sub-<label>.html; group.html at the group level) again from '
        'existing outputs, run nothing',
    )
    flow.add_argument(
        '--random-seed', type=int, default=0, metavar='N', help='seed for every random step'
    )
    flow.add_argument(
        '--config-file',
        type=existing_file,
        metavar='FILE',
        help='repeat an earlier run: its settings, saved as OUTPUT_DIR/sub-<label>/log/<run_uuid>/'
        'mrctprep.toml, are read from FILE; the options given here override them',
    )
    flow.add_argument('--notrack', action='store_true', help='accepted; mrctprep sends nothing')


def check_options(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """What argparse cannot check alone (usage and exit 2 when wrong)."""
    _check_drr_views(parser, opts)
    _check_training(parser, opts)


MODEL_DEFAULTS = ModelOptions()
#: Training options that one model reads, by model: each option's destination and its flag.
MODEL_ONLY_OPTIONS = {
    'efficientscn': {
        'fine_tune_localization': '--fine-tune-localization',
        'learning_rate': '--learning-rate',
        'train_augmentation': '--no-augmentation',
    },
    'iguane': {'iguane_head_scale': '--iguane-head-scale'},
}


def _check_training(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    if opts.train and opts.analysis_level != 'group':
        parser.error(
            '--train runs at the group level: mrctprep BIDS_DIR OUTPUT_DIR group --train '
            f'{opts.train}'
        )
    training_only = opts.resume or opts.steps or opts.train_patch_size
    if (training_only or opts.validation_participants is not None) and not opts.train:
        parser.error(
            '--resume, --steps, --train-patch-size and --validation-participants go with '
            '--train NAME'
        )
    if opts.train in ('cyclegan', 'sim2real') and not opts.real_radiographs:
        parser.error('--train cyclegan needs --real-radiographs DIR (domain B)')
    if opts.train == 'efficientscn' and not opts.train_labels:
        parser.error('--train efficientscn needs the label maps: --train-labels DIR')
    given_weights = {name for name, _ in opts.weights or ()}
    if opts.fine_tune_localization and 'efficientscn-localization' not in given_weights:
        parser.error(
            '--fine-tune-localization trains given weights further: add --weights '
            "efficientscn-localization=FILE (mrctprep import-weights converts the authors')"
        )
    for model, options in MODEL_ONLY_OPTIONS.items():
        # against the library's defaults: a --config-file replaces the parser's
        given = [dest for dest in options if getattr(opts, dest) != getattr(MODEL_DEFAULTS, dest)]
        if given and opts.train != model:
            flags = list(options.values())
            listed = ', '.join(flags[:-1]) + ' and ' + flags[-1] if len(flags) > 1 else flags[0]
            parser.error(f'{listed} go{"es" if len(flags) == 1 else ""} with --train {model}')
    patch = opts.train_patch_size
    if patch and (len(patch) not in (1, 3) or any(size % SIZE_MULTIPLE for size in patch)):
        parser.error(
            f'--train-patch-size {" ".join(map(str, patch))}: one or three sizes, '
            f'each a multiple of {SIZE_MULTIPLE}'
        )


def _check_drr_views(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """Views that would share one output name are a usage error, found before any work."""
    try:
        resolve_drr_settings(
            opts.drr_preset, angles=opts.drr_angles or (), grid=opts.drr_grid or ()
        )
    except ValueError as exc:
        parser.error(f'--drr-angles/--drr-view-grid: {exc}')
