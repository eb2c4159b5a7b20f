"""``mrctprep simulate-ct BIDS_DIR``: kernel/dose variants of a dataset's CTs, for training
CT harmonization where a site has only one reconstruction per acquisition."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mrctprep.cli.console import add_verbosity_options, setup_logging
from mrctprep.cli.errors import EXIT_OK, report_error
from mrctprep.cli.option_types import non_negative_int, positive_int
from mrctprep.core.errors import MrctprepError

LOGGER = logging.getLogger(__name__)
#: A reference reconstruction and a sharp, quarter-dose source, as in CTFlow's experiments.
DEFAULT_CONDITIONS = ('standard:100', 'sharp:25')
KERNELS = ('smooth', 'standard', 'sharp')


def scan_condition(text: str) -> Any:
    """``KERNEL:DOSE%`` (``sharp:25``) as a ScanCondition."""
    from mrctprep.imaging.ct_simulation import ScanCondition

    kernel, _, dose = text.partition(':')
    try:
        return ScanCondition(kernel, float(dose) / 100.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f'{text!r}: expected KERNEL:DOSE with KERNEL one of {", ".join(KERNELS)} and DOSE '
            f'a percentage in (0, 100] ({exc})'
        ) from exc


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        prog=f'mrctprep {name}',
        help='simulate kernel/dose reconstructions of the CTs in a BIDS dataset',
        description='Put every CT of BIDS_DIR without a rec- entity through a simulated '
        'scanner (forward projection on a 2x finer grid, Poisson and electronic noise for the '
        "dose, filtered back-projection with the kernel's filter) and write each condition "
        'beside it as sub-<label>_rec-<kernel><dose>_ct.nii.gz with a sidecar saying it is '
        'simulated. These pairs train `group --train ctflow`.',
    )
    parser.add_argument('bids_dir', type=Path, help='the BIDS dataset (written into)')
    parser.add_argument(
        '--condition',
        dest='conditions',
        action='append',
        type=scan_condition,
        metavar='KERNEL:DOSE',
        help=f'a kernel ({", ".join(KERNELS)}) and a dose in percent of the original; '
        f'repeat for several (default: {" ".join(DEFAULT_CONDITIONS)})',
    )
    parser.add_argument('--participant-label', nargs='+', default=[], help='only these subjects')
    parser.add_argument(
        '--views',
        type=positive_int,
        default=None,
        help='projection views over 180 degrees (default: pi/2 per detector bin)',
    )
    parser.add_argument('--seed', type=non_negative_int, default=0, help='noise seed')
    parser.add_argument(
        '--nprocs',
        type=positive_int,
        default=1,
        help='images simulated at once, one process each (default 1; each holds one image '
        'and its projections in memory)',
    )
    parser.add_argument(
        '--overwrite', action='store_true', help='replace variants that already exist'
    )
    add_verbosity_options(parser)
    parser.set_defaults(handler=handle)


def handle(opts: argparse.Namespace) -> int:
    from mrctprep.imaging.ct_simulation import ScannerModel
    from mrctprep.importing.simulated_ct import simulate_dataset

    verbosity = opts.verbose - opts.quiet
    setup_logging(verbosity)
    conditions = opts.conditions or [scan_condition(text) for text in DEFAULT_CONDITIONS]
    try:
        written = simulate_dataset(
            opts.bids_dir,
            conditions,
            participants=opts.participant_label,
            scanner=ScannerModel(views=opts.views),
            seed=opts.seed,
            overwrite=opts.overwrite,
            processes=opts.nprocs,
        )
    except MrctprepError as exc:
        return report_error(exc, verbosity)
    LOGGER.info('%d simulated CT image(s) written into %s', len(written), opts.bids_dir)
    return EXIT_OK
