"""``mrctprep demo DIR``: write the demo BIDS dataset."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from mrctprep.cli.console import setup_logging
from mrctprep.cli.errors import EXIT_OK, EXIT_USAGE
from mrctprep.cli.option_types import positive_int

LOGGER = logging.getLogger(__name__)


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        prog=f'mrctprep {name}',
        help='write a small example BIDS dataset',
        description='Write a small BIDS dataset (by default 4 subjects: 2 travellers x 2 sites; '
        'T1w + CT, CT also as DICOM and NRRD under sourcedata/) built from the MNI152 template.',
    )
    parser.add_argument(
        'bids_dir', type=Path, help='where to write it (must not exist or be empty)'
    )
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help="random seed of the scanners' noise and bias fields (the anatomies are fixed)",
    )
    parser.add_argument(
        '--participants-per-site',
        type=positive_int,
        default=2,
        metavar='N',
        help='travellers, each scanned at every site (default 2; at most 26; about 10 MB and '
        '10 s per participant)',
    )
    parser.add_argument(
        '--sites',
        type=positive_int,
        default=2,
        metavar='N',
        help='sites (default 2: siteA 3 T, siteB 1.5 T; further ones lie between the two)',
    )
    parser.set_defaults(handler=handle)


def handle(opts: argparse.Namespace) -> int:
    from mrctprep.demo.dataset import write_demo_dataset

    setup_logging(0)
    try:
        labels = write_demo_dataset(
            opts.bids_dir.absolute(),
            seed=opts.seed,
            participants_per_site=opts.participants_per_site,
            sites=opts.sites,
        )
    except (OSError, ValueError) as exc:  # FileExistsError: the folder is not empty
        print(f'mrctprep: error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    LOGGER.info(
        'Demo dataset with %s written to %s', ', '.join(f'sub-{s}' for s in labels), opts.bids_dir
    )
    return EXIT_OK
