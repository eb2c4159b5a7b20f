"""The command line: ``mrctprep BIDS_DIR OUTPUT_DIR {participant,group} [options]``."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

from mrctprep import __version__
from mrctprep.core.devices import DEVICE_PATTERN
from mrctprep.core.errors import InputError
from mrctprep.imaging.intensity import SIZE_MULTIPLE
from mrctprep.imaging.skullstrip import SKULL_STRIP_METHODS
from mrctprep.models.weights import WEIGHTS_DIR_ENV, model_names, user_cache_dir


class _ListPipelinesAction(argparse.Action):
    """Print the pipelines and exit, like ``--version``: no positional arguments needed."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from mrctprep.workflows.pipelines import describe_pipelines

        print(describe_pipelines())
        parser.exit()


def parse_memory_gb(value: str) -> float:
    """``--mem``: ``16G``, ``16GB``, ``16000M``, ``1T``; a bare number is MB (fMRIPrep).

    >>> parse_memory_gb('16G'), parse_memory_gb('8000MB'), parse_memory_gb('2048')
    (16.0, 7.8125, 2.0)
    """
    match = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*', value)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f'{value!r} is not a memory size such as 16G or 8000M')
    number, unit = float(match.group(1)), (match.group(2) or 'M').upper()
    return number * {'K': 1 / 1024**2, 'M': 1 / 1024, 'G': 1, 'T': 1024}[unit]


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f'{value!r} is not a positive integer')
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f'{value!r} is not a positive number')
    return number


def _drr_angles(value: str) -> list[list[float]]:
    """``--drr-angles "0,0;10,-5"``: (orbital, angulation) pairs in degrees."""
    pairs = []
    for part in value.split(';'):
        try:
            pair = [float(number) for number in part.split(',')]
        except ValueError:
            pair = []
        if len(pair) != 2 or not all(map(math.isfinite, pair)):
            raise argparse.ArgumentTypeError(
                f'{value!r}: use "ORBITAL,ANGULATION;ORBITAL,ANGULATION;..." in degrees'
            )
        pairs.append(pair)
    return pairs


def _drr_view_grid(value: str) -> list[float]:
    """``--drr-view-grid -10:10:5``: both angles from START to STOP (inclusive) by STEP."""
    try:
        start, stop, step = (float(number) for number in value.split(':'))
    except ValueError:
        start, stop, step = 0.0, -1.0, 0.0
    if not (step > 0 and start <= stop and (stop - start) / step < 100):
        raise argparse.ArgumentTypeError(
            f'{value!r}: use START:STOP:STEP in degrees with START <= STOP, STEP > 0 and at '
            'most 100 steps'
        )
    return [start, stop, step]


def _weights_option(value: str) -> tuple[str, Path]:
    name, separator, path = value.partition('=')
    if not separator or not path:
        raise argparse.ArgumentTypeError(f'{value!r}: expected NAME=FILE')
    if name not in model_names():
        raise argparse.ArgumentTypeError(
            f'{name!r}: unknown model; models: {", ".join(model_names())}'
        )
    return name, Path(path)


def _device(value: str) -> str:
    if not DEVICE_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(f'{value!r}: use auto, cpu, cuda or cuda:N')
    return value


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f'{value}: file not found')
    return Path(os.path.abspath(path))


def available_cpus() -> int:
    """CPUs this process may use (cgroup/SLURM affinity), not the machine's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def build_parser() -> argparse.ArgumentParser:
    from mrctprep.workflows.pipelines import DEFAULT_PIPELINES, PIPELINES

    parser = argparse.ArgumentParser(
        prog='mrctprep',
        description='mrctprep: a BIDS App for MR and CT images. Other commands: '
        '`mrctprep demo DIR` writes a small example BIDS dataset.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument('bids_dir', type=Path, help='the root of the BIDS dataset (read only)')
    parser.add_argument('output_dir', type=Path, help='where the derivatives are written')
    parser.add_argument(
        'analysis_level', choices=['participant', 'group'], help='processing stage'
    )
    parser.add_argument('--version', action='version', version=f'mrctprep {__version__}')
    parser.add_argument(
        '--list-pipelines', action=_ListPipelinesAction, help='list the pipelines and exit'
    )

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
        type=_existing_file,
        metavar='FILE',
        help='JSON {query: {entity: value}} refining the queries t1w, t2w, flair, pdw, ct '
        '(null = entity absent, "*" = any)',
    )
    bids.add_argument(
        '--bids-database-dir',
        type=Path,
        metavar='DIR',
        help='keep the pybids index here and reuse it (default: a fresh one per run, in the '
        'work directory)',
    )
    bids.add_argument(
        '--skip-bids-validation',
        '--skip_bids_validation',
        '--skip_bids_validator',
        action='store_true',
        help='do not check that file names are BIDS',
    )

    perf = parser.add_argument_group('Resources')
    cpus = available_cpus()
    perf.add_argument(
        '--nprocs',
        '--nthreads',
        '--n_cpus',
        '--n-cpus',
        type=_positive_int,
        default=cpus,
        help='CPU slots for the MultiProc plugin',
    )
    perf.add_argument(
        '--omp-nthreads',
        type=_positive_int,
        default=None,
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
        type=_existing_file,
        metavar='FILE',
        help='YAML {plugin: MultiProc|Linear|SLURM|SGE|PBS|…, plugin_args: {…}}',
    )
    perf.add_argument(
        '--device',
        type=_device,
        default='auto',
        help='torch device for model nodes: auto, cpu, cuda or cuda:N',
    )

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
        type=_existing_file,
        metavar='FILE',
        help="brain template to register to (default: nilearn's MNI152 ICBM 2009a symmetric "
        '1 mm brain); its file name becomes the space- label',
    )

    from mrctprep.imaging.drr.presets import OUTPUTS, PRESETS
    from mrctprep.imaging.drr.tables import SPECTRA

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
        type=_drr_angles,
        metavar='"A,B;A,B;..."',
        help='views as (orbital LAO/RAO, angulation CRA/CAU) pairs in degrees about the '
        "isocentre; unset: the preset's views",
    )
    views.add_argument(
        '--drr-view-grid',
        type=_drr_view_grid,
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
    drr.add_argument(
        '--drr-detector',
        type=_positive_int,
        metavar='N',
        help="detector of N x N pixels; unset: the preset's",
    )
    drr.add_argument(
        '--drr-pixel-size',
        type=_positive_float,
        metavar='MM',
        help="detector pixel spacing; unset: the preset's",
    )
    drr.add_argument(
        '--drr-sdd',
        type=_positive_float,
        metavar='MM',
        help="source-to-detector distance; unset: the preset's",
    )
    drr.add_argument(
        '--drr-sid',
        type=_positive_float,
        metavar='MM',
        help="source-to-isocentre distance; unset: the preset's",
    )
    drr.add_argument(
        '--drr-noise',
        type=_positive_int,
        metavar='PHOTONS',
        help='Poisson noise for PHOTONS photons per pixel; unset: no noise',
    )

    superres = parser.add_argument_group('Super-resolution (superres)')
    superres.add_argument(
        '--superres-voxel-size',
        type=_positive_float,
        default=1.0,
        metavar='MM',
        help='isotropic voxel size of the super-resolved images (default 1.0)',
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
        type=_positive_int,
        metavar='N',
        help='cap on ADMM iterations (default 512; the run usually stops earlier, converged)',
    )
    superres.add_argument(
        '--superres-interleaved',
        action='store_true',
        help="UniRes's --scale: per-scan correction of interleaved-acquisition intensity "
        'differences between odd and even slices; MR only',
    )

    models = parser.add_argument_group('Models (mr-harmonize; training at the group level)')
    models.add_argument(
        '--weights',
        action='append',
        type=_weights_option,
        metavar='NAME=FILE',
        help=f'weights of model NAME ({", ".join(model_names())}): a .pt with its .json card '
        f'beside it. Default: OUTPUT_DIR/models/NAME/NAME.pt, then ${WEIGHTS_DIR_ENV}/NAME.pt, '
        f'then {user_cache_dir()}/NAME.pt',
    )
    models.add_argument(
        '--train',
        choices=model_names(),
        metavar='NAME',
        help='group level: train model NAME on the participant outputs (iguane: on mr-preproc '
        "outputs, sites from participants.tsv's site column or the sidecars' scanner); writes "
        'OUTPUT_DIR/models/NAME/',
    )
    models.add_argument(
        '--steps',
        type=_positive_int,
        metavar='N',
        help='training steps (iguane: each step visits every source site; default 20000 = '
        "IGUANe's 100 epochs x 200 steps)",
    )
    models.add_argument(
        '--train-patch-size',
        type=_positive_int,
        nargs='+',
        metavar='N',
        help='train on random crops of N (or NX NY NZ) voxels, multiples of 16, instead of '
        'whole volumes: the networks are fully convolutional; 64 makes CPU training practical',
    )
    models.add_argument(
        '--checkpoint-every',
        type=_positive_int,
        default=200,
        metavar='N',
        help='save a checkpoint (in the work directory) every N steps (default 200)',
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
        type=Path,
        default=Path('work'),
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
    flow.add_argument('--random-seed', type=int, default=0, help='seed for every random step')
    flow.add_argument('--notrack', action='store_true', help='accepted; mrctprep sends nothing')

    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        '-v',
        '--verbose',
        action='count',
        default=0,
        help='more output (-vv: debug); errors then show their traceback',
    )
    verbosity.add_argument('-q', '--quiet', action='count', default=0, help='less output')
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the syntax (argparse: usage and exit 2 when wrong) and fill in defaults."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    _check_drr_views(parser, opts)
    _check_training(parser, opts)
    if opts.omp_nthreads is None:
        opts.omp_nthreads = max(1, min(opts.nprocs - 1, 8))
    for name in ('bids_dir', 'output_dir', 'work_dir', 'bids_database_dir'):
        if getattr(opts, name) is not None:
            setattr(opts, name, Path(os.path.abspath(getattr(opts, name))))
    return opts


def _check_training(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    if opts.train and opts.analysis_level != 'group':
        parser.error(
            '--train runs at the group level: mrctprep BIDS_DIR OUTPUT_DIR group --train '
            f'{opts.train}'
        )
    if (opts.resume or opts.steps or opts.train_patch_size) and not opts.train:
        parser.error('--resume, --steps and --train-patch-size go with --train NAME')
    patch = opts.train_patch_size
    if patch and (len(patch) not in (1, 3) or any(size % SIZE_MULTIPLE for size in patch)):
        parser.error(
            f'--train-patch-size {" ".join(map(str, patch))}: one or three sizes, '
            f'each a multiple of {SIZE_MULTIPLE}'
        )


def _check_drr_views(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """Views that would share one output name are a usage error, found before any work."""
    from mrctprep.imaging.drr.presets import resolve_drr_settings

    try:
        resolve_drr_settings(
            opts.drr_preset, angles=opts.drr_angles or (), grid=opts.drr_view_grid or ()
        )
    except ValueError as exc:
        parser.error(f'--drr-angles/--drr-view-grid: {exc}')


def check_locations(bids_dir: Path, output_dir: Path, work_dir: Path) -> None:
    """The input exists and nothing we write lands inside it (symbolic links followed)."""
    if not bids_dir.is_dir():
        raise InputError(
            f'BIDS_DIR {bids_dir} does not exist or is not a directory (is the volume mounted?)'
        )
    bids_dir, output_dir, work_dir = bids_dir.resolve(), output_dir.resolve(), work_dir.resolve()
    if output_dir == bids_dir:
        raise InputError(f'OUTPUT_DIR must differ from BIDS_DIR ({bids_dir})')
    # BIDS recommends <bids>/derivatives/<pipeline> for outputs; anywhere else inside the
    # input would add files to the raw dataset.
    if output_dir.is_relative_to(bids_dir) and not output_dir.is_relative_to(
        bids_dir / 'derivatives'
    ):
        raise InputError(
            f'OUTPUT_DIR {output_dir} lies inside BIDS_DIR {bids_dir}; '
            'choose a folder outside it (or BIDS_DIR/derivatives/mrctprep)'
        )
    if work_dir.is_relative_to(bids_dir):
        raise InputError(f'the work directory {work_dir} must not lie inside BIDS_DIR {bids_dir}')
