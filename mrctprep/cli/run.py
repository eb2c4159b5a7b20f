"""``mrctprep BIDS_DIR OUTPUT_DIR {participant,group}``: the BIDS App.

From the parsed options to a frozen :class:`~mrctprep.core.config.RunConfig` (device and
threads resolved here, once), then the participant or group level.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mrctprep.cli.console import HelpFormatter, add_verbosity_options, setup_logging
from mrctprep.cli.errors import report_error
from mrctprep.cli.run_options import add_run_arguments, check_options
from mrctprep.core.config import RunConfig, read_saved_options
from mrctprep.core.errors import MrctprepError

LOGGER = logging.getLogger(__name__)

_DESCRIPTION = (
    'mrctprep: a BIDS App for MR and CT images. Other commands (each with --help): '
    '`mrctprep demo DIR` writes a small example BIDS dataset; `mrctprep import SOURCE '
    'BIDS_DIR` brings CT (DICOM, NRRD, NIfTI) into a BIDS dataset in HU; `mrctprep '
    "import-weights MODEL FILE` converts a model's published weights."
)


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        prog='mrctprep',
        description=_DESCRIPTION,
        help='the BIDS App (the word "run" may be left out)',
        formatter_class=HelpFormatter,
    )
    add_run_arguments(parser)
    add_verbosity_options(parser)
    # Settings that a file option fills (--use-plugin, --bids-filter-file), or a config file
    # sets directly.
    parser.set_defaults(
        handler=handle, parser=parser, plugin='MultiProc', plugin_args={}, bids_filters={}
    )


def handle(opts: argparse.Namespace) -> int:
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
    from mrctprep.core.bids import check_locations, read_bids_filters, strip_prefix
    from mrctprep.core.devices import resolve_device

    if opts.config_file:
        opts = over_config_file(opts)
    check_options(opts.parser, opts)
    check_locations(opts.bids_dir, opts.output_dir, opts.work_dir)
    plugin, plugin_args = (
        read_plugin_file(opts.use_plugin) if opts.use_plugin else (opts.plugin, opts.plugin_args)
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
        'bids_filters': read_bids_filters(opts.bids_filter_file)
        if opts.bids_filter_file
        else opts.bids_filters,
        'pipelines': list(dict.fromkeys(opts.pipelines)),
        'omp_nthreads': omp_nthreads,
        'plugin': plugin,
        'plugin_args': plugin_args,
        'device': resolve_device(opts.device),
        'weights': {name: str(path) for name, path in opts.weights or []},
        'verbosity': verbosity,
    }
    return RunConfig.from_options({**vars(opts), **derived})


#: What a config file does not set: where and at which level this call runs (its positional
#: arguments), what it does instead of processing (a dry run, the methods text), and its own
#: id, version and verbosity.
NOT_FROM_CONFIG_FILE = frozenset(
    {
        'bids_dir',
        'output_dir',
        'analysis_level',
        'dry_run',
        'boilerplate_only',
        'run_uuid',
        'version',
        'verbosity',
    }
)


def over_config_file(opts: argparse.Namespace) -> argparse.Namespace:
    """The command line parsed again with the settings of ``--config-file`` (a run's saved
    ``mrctprep.toml``) as its defaults: every option the command line names wins."""
    saved = read_saved_options(opts.config_file)
    defaults = {key: value for key, value in saved.items() if key not in NOT_FROM_CONFIG_FILE}
    if 'weights' in defaults:  # as the repeatable --weights NAME=FILE gives them
        defaults['weights'] = [(name, Path(path)) for name, path in defaults['weights'].items()]
    opts.parser.set_defaults(**defaults)
    return opts.parser.parse_args(opts.arguments)
