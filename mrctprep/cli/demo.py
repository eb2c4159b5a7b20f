"""``mrctprep demo DIR``: write the demo BIDS dataset."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from mrctprep.cli.console import setup_logging
from mrctprep.cli.errors import EXIT_OK, EXIT_USAGE

LOGGER = logging.getLogger(__name__)


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        prog=f'mrctprep {name}',
        help='write a small example BIDS dataset',
        description='Write a small BIDS dataset (4 subjects: 2 anatomies x 2 sites; T1w + CT, '
        'CT also as DICOM and NRRD under sourcedata/) built from the MNI152 template.',
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
    parser.set_defaults(handler=handle)


def handle(opts: argparse.Namespace) -> int:
    from mrctprep.demo.dataset import write_demo_dataset

    setup_logging(0)
    try:
        labels = write_demo_dataset(opts.bids_dir.absolute(), seed=opts.seed)
    except OSError as exc:  # FileExistsError included: the folder is not empty
        print(f'mrctprep: error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    LOGGER.info(
        'Demo dataset with %s written to %s', ', '.join(f'sub-{s}' for s in labels), opts.bids_dir
    )
    return EXIT_OK
