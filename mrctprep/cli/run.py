"""``mrctprep BIDS_DIR OUTPUT_DIR {participant,group}``: the BIDS App.

From the parsed options to a frozen :class:`~mrctprep.core.config.RunConfig` (device and
threads resolved here, once), then the participant or group level.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from mrctprep.cli.console import add_verbosity_options, setup_logging
from mrctprep.cli.errors import report_error
from mrctprep.cli.run_options import add_run_arguments, check_options
from mrctprep.core.config import RunConfig
from mrctprep.core.errors import MrctprepError

LOGGER = logging.getLogger(__name__)

_DESCRIPTION = (
    'mrctprep: a BIDS App for MR and CT images. Other commands (each with --help): '
    '`mrctprep demo DIR` writes a small example BIDS dataset; `mrctprep import SOURCE '
    'BIDS_DIR` brings CT (DICOM, NRRD, NIfTI) into a BIDS dataset in HU; `mrctprep '
    "import-weights MODEL FILE` converts a model's published weights; `mrctprep slurm-array "
    'BIDS_DIR OUTPUT_DIR -w WORK_DIR` writes a SLURM job-array script.'
)


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        prog='mrctprep',
        description=_DESCRIPTION,
        help='the BIDS App (the word "run" may be left out)',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run_arguments(parser)
    add_verbosity_options(parser)
    parser.set_defaults(handler=handle, parser=parser)


def handle(opts: argparse.Namespace) -> int:
    check_options(opts.parser, opts)
    verbosity = opts.verbose - opts.quiet
    setup_logging(verbosity)
    try:
        config = build_config(opts, verbosity)
        if config.inputs.analysis_level == 'group':
            from mrctprep.cli.group import run_group

            return run_group(config)
        from mrctprep.cli.participant import run_participant

        return run_participant(config)
    except MrctprepError as exc:
        return report_error(exc, verbosity)


def build_config(opts: argparse.Namespace, verbosity: int) -> RunConfig:
    """The run's configuration: the options by name, plus what is derived from them (files
    read, labels without prefixes, the device resolved, threads per process)."""
    from mrctprep.cli.execution import read_plugin_file
    from mrctprep.cli.slurm import model_job_device
    from mrctprep.core.bids import check_locations, read_bids_filters, strip_prefix
    from mrctprep.core.devices import resolve_device

    check_locations(opts.bids_dir, opts.output_dir, opts.work_dir)
    plugin, plugin_args = (
        read_plugin_file(opts.use_plugin) if opts.use_plugin else ('MultiProc', {})
    )
    omp_nthreads = opts.omp_nthreads or max(1, min(opts.nprocs - 1, 8))
    if omp_nthreads > opts.nprocs:
        LOGGER.warning(
            '--omp-nthreads %d exceeds --nprocs %d: processes will compete for CPUs',
            omp_nthreads,
            opts.nprocs,
        )
    derived = {
        'participant_label': strip_prefix(opts.participant_label, 'sub-'),
        'session_label': strip_prefix(opts.session_label, 'ses-'),
        'bids_filters': read_bids_filters(opts.bids_filter_file) if opts.bids_filter_file else {},
        'pipelines': list(dict.fromkeys(opts.pipelines)),
        'omp_nthreads': omp_nthreads,
        'plugin': plugin,
        'plugin_args': plugin_args,
        'device': model_job_device(opts.device, plugin, plugin_args)
        or resolve_device(opts.device),
        'weights': {name: str(path) for name, path in opts.weights or []},
        'verbosity': verbosity,
    }
    return RunConfig.from_options({**vars(opts), **derived})
