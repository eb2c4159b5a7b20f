"""``mrctprep import-weights MODEL FILE``: a model's published weights as mrctprep weights."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mrctprep.cli.console import add_verbosity_options, setup_logging
from mrctprep.cli.errors import EXIT_OK, report_error
from mrctprep.core.errors import MrctprepError
from mrctprep.models.weights import WEIGHTS_SUFFIX, ModelWeights, user_cache_dir

LOGGER = logging.getLogger(__name__)
IMPORTERS = ('iguane', 'efficientscn-localization')


def add_parser(subparsers: Any, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        prog=f'mrctprep {name}',
        help="convert a model's published weights",
        description="Convert a model's published weights into mrctprep's format: a torch "
        'state dict FILE.pt with its model card FILE.json (source file and SHA-256). iguane: '
        "the authors' Keras .h5 of the harmonization generator (TensorFlow 2 save_weights or "
        'save), checked layer by layer. efficientscn-localization: the FLARE21 EfficientSCN '
        "authors' localization SavedModel folder (or its variables/ folder), read without "
        'TensorFlow and checked variable by variable.',
    )
    parser.add_argument('model', choices=IMPORTERS, help='the model the weights are for')
    parser.add_argument('source', type=Path, help='the published weights file or folder')
    parser.add_argument(
        '--output',
        type=Path,
        help=f'where to write the weights (a {WEIGHTS_SUFFIX} file); default: the user cache '
        f'{user_cache_dir()}/MODEL{WEIGHTS_SUFFIX}, where runs look for them',
    )
    add_verbosity_options(parser)
    parser.set_defaults(handler=handle, parser=parser)


def handle(opts: argparse.Namespace) -> int:
    output = opts.output or user_cache_dir() / f'{opts.model}{WEIGHTS_SUFFIX}'
    if output.suffix != WEIGHTS_SUFFIX:
        opts.parser.error(
            f'--output {output}: must end in {WEIGHTS_SUFFIX} (its card is the .json)'
        )
    verbosity = opts.verbose - opts.quiet
    setup_logging(verbosity)
    try:
        weights = _import(opts.model, opts.source, output)
    except MrctprepError as exc:
        return report_error(exc, verbosity)
    LOGGER.info(
        '%s weights from %s written to %s (SHA-256 %s) with their card beside them',
        opts.model,
        opts.source,
        weights.path,
        weights.sha256,
    )
    return EXIT_OK


def _import(model: str, source: Path, output: Path) -> ModelWeights:
    if model == 'efficientscn-localization':
        from mrctprep.models.efficientscn_import import import_localization_weights

        return import_localization_weights(source, output)
    from mrctprep.models.keras_import import import_keras_weights

    return import_keras_weights(source, output)
