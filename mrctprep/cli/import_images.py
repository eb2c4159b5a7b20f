"""``mrctprep import SOURCE BIDS_DIR``: CT as DICOM, NRRD or NIfTI into a BIDS dataset, in HU."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mrctprep.cli.console import add_verbosity_options, setup_logging
from mrctprep.cli.errors import EXIT_OK, report_error
from mrctprep.core.errors import MrctprepError
from mrctprep.importing import FORMATS

LOGGER = logging.getLogger(__name__)


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        prog=f'mrctprep {name}',
        help='bring CT images (DICOM, NRRD, NIfTI) into a BIDS dataset, in HU',
        description='Build or extend a BIDS dataset from CT images: a folder of cases '
        '(Dicom_Data/case_1/*.dcm, Nrrd_Data/case_1.nrrd, Nifti_Data/case_1.nii.gz, or the '
        'cases directly in SOURCE). Each case becomes sub-<case>/anat/sub-<case>_ct.nii.gz '
        '(int16 HU) with a JSON sidecar of acquisition facts; the originals are copied to '
        'sourcedata/. Nothing is written unless every case converts.',
    )
    parser.add_argument('source', type=Path, help='the folder of cases')
    parser.add_argument('bids_dir', type=Path, help='the BIDS dataset to create or extend')
    parser.add_argument(
        '--format',
        choices=('auto', *FORMATS),
        default='auto',
        help='import only this format; auto: per case, DICOM, else NRRD, else NIfTI',
    )
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace the CT images (and their sourcedata) of subjects that already have one',
    )
    add_verbosity_options(parser)
    parser.set_defaults(handler=handle)


def handle(opts: argparse.Namespace) -> int:
    from mrctprep.importing.ct import import_dataset

    verbosity = opts.verbose - opts.quiet
    setup_logging(verbosity)
    try:
        imported = import_dataset(
            opts.source, opts.bids_dir, source_format=opts.format, overwrite=opts.overwrite
        )
    except MrctprepError as exc:
        return report_error(exc, verbosity)
    LOGGER.info(
        '%d CT image(s) of %d subject(s) imported into %s',
        len(imported),
        len({p.subject for p in imported}),
        opts.bids_dir,
    )
    return EXIT_OK
