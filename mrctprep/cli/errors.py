"""From the library's typed errors to what the command line says: exit code, one line, hint.

Exit codes follow the NiPreps convention (docs/usage.md, "Exit codes"). The hints name the
options that fix a problem; they live here, beside the options, and nowhere in the library.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from mrctprep.core.errors import (
    BidsValidationError,
    BidsValidatorUnavailableError,
    CheckpointError,
    DeviceUnavailableError,
    ExistingImagesError,
    ImplausibleBrainMaskError,
    InputError,
    InsufficientMemoryError,
    MrctprepError,
    NoModelInputsError,
    NoReconstructionPairsError,
    NotABidsDatasetError,
    ResourceError,
    TooFewRadiographsError,
    WeightsNotFoundError,
    WorkflowBuildError,
)
from mrctprep.models.weights import WEIGHTS_DIR_ENV, WEIGHTS_SUFFIX

EXIT_OK = 0
EXIT_NODE_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_BUILDABLE = os.EX_SOFTWARE  # 70
EXIT_RESOURCE = 126

#: Most specific first: the first class an error is an instance of decides.
_EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (WorkflowBuildError, EXIT_NOT_BUILDABLE),
    (ResourceError, EXIT_RESOURCE),
    (InputError, EXIT_USAGE),
    (MrctprepError, EXIT_USAGE),
)


def exit_code_of(error: Exception) -> int:
    """The exit code that ends a run refused with ``error``."""
    return next((code for kind, code in _EXIT_CODES if isinstance(error, kind)), EXIT_USAGE)


#: how to train a model's weights, where that is not ``--train <model name>``
_TRAINING_COMMANDS = {
    'sim2real': 'cyclegan --real-radiographs DIR (or give an upstream latest_net_G_A.pth)',
    'efficientscn-localization': "efficientscn --train-labels DIR (or convert the authors' "
    'SavedModel: mrctprep import-weights efficientscn-localization DIR)',
    'efficientscn-segmentation': 'efficientscn --train-labels DIR',
}


def _weights_hint(error: WeightsNotFoundError) -> str:
    where = f'--weights {error.model}={error.given}: ' if error.given else ''
    return (
        f'{where}{error}; give --weights {error.model}=FILE (a {WEIGHTS_SUFFIX} written by '
        f'mrctprep with its .json card beside it), put {error.model}{WEIGHTS_SUFFIX} in '
        f'${WEIGHTS_DIR_ENV}, or train them: mrctprep BIDS_DIR OUTPUT_DIR group --train '
        f'{_TRAINING_COMMANDS.get(error.model, error.model)}'
    )


def _device_hint(error: DeviceUnavailableError) -> str:
    return (
        f'--device {error.requested}: {error.reason} (check CUDA_VISIBLE_DEVICES, `--nv` for '
        'Singularity, `--gpus all` for Docker; or use --device auto or cpu)'
    )


def _checkpoint_hint(error: CheckpointError) -> str:
    advice = (
        'checkpoints live in the work directory: give the same -w as the run to continue, or '
        'train without --resume'
        if not error.checkpoint.is_file()
        else 'train without --resume'
    )
    return f'--resume: {error}; {advice}'


def _memory_hint(error: InsufficientMemoryError) -> str:
    if error.fitting_patch:
        return f'{error}; --train-patch-size {error.fitting_patch} fits'
    return f'{error}; use a machine or GPU (--device cuda) with more memory'


def _no_inputs_hint(error: NoModelInputsError) -> str:
    return f'{error}; run the participant level with --pipelines mr-preproc first'


def _radiographs_hint(error: TooFewRadiographsError) -> str:
    if error.domain == 'simulated':
        return (
            f'{error}; run the participant level with --pipelines drr first, or give a folder '
            'of DRRs with --simulated-radiographs DIR'
        )
    return f'{error}; --real-radiographs needs a folder of DICOM, PNG or JPEG radiographs'


def _pairs_hint(error: NoReconstructionPairsError) -> str:
    return (
        f'{error}; --reference-rec names the reference, and `mrctprep simulate-ct BIDS_DIR` '
        'makes pairs from single CTs'
    )


def _existing_images_hint(error: ExistingImagesError) -> str:
    return f'{error}; pass --overwrite to replace them'


def _dataset_hint(error: NotABidsDatasetError) -> str:
    return f'{error} (`mrctprep demo DIR` writes an example dataset)'


def _validation_hint(error: BidsValidationError) -> str:
    return (
        f'{error}, each listed above with its file; fix those files, list files that are not '
        'BIDS in .bidsignore, or pass --skip-bids-validation'
    )


def _validator_hint(error: BidsValidatorUnavailableError) -> str:
    return (
        f'{error}; reinstall mrctprep (it needs bids-validator-deno) or pass '
        '--skip-bids-validation'
    )


_HINTS: dict[type[Exception], Callable[..., str]] = {
    BidsValidationError: _validation_hint,
    BidsValidatorUnavailableError: _validator_hint,
    NotABidsDatasetError: _dataset_hint,
    ExistingImagesError: _existing_images_hint,
    WeightsNotFoundError: _weights_hint,
    DeviceUnavailableError: _device_hint,
    CheckpointError: _checkpoint_hint,
    NoModelInputsError: _no_inputs_hint,
    InsufficientMemoryError: _memory_hint,
    TooFewRadiographsError: _radiographs_hint,
    NoReconstructionPairsError: _pairs_hint,
}


def _brain_mask_hint(message: str) -> str | None:
    if message.startswith('the none brain mask'):  # already the option that would help
        return None
    return 'if the image is already skull-stripped, use --skull-strip none'


#: Hints for errors raised inside a node, found by their class name in its crash file.
_NODE_HINTS: dict[str, Callable[[str], str | None]] = {
    ImplausibleBrainMaskError.__name__: _brain_mask_hint,
}


def describe_error(error: Exception) -> str:
    """The one line that the command line prints for ``error``, with the option that fixes it."""
    hint = _HINTS.get(type(error))
    return hint(error) if hint else str(error)


def describe_node_error(error_line: str) -> str:
    """A crash file's last line (``module.Class: message``), with the option that fixes it."""
    qualified_name, _, message = error_line.partition(': ')
    node_hint = _NODE_HINTS.get(qualified_name.rsplit('.', 1)[-1])
    hint = node_hint(message) if node_hint else None
    return f'{error_line}; {hint}' if hint else error_line


def report_error(error: Exception, verbosity: int) -> int:
    """Print ``error`` as one line (with its traceback from ``-v`` on); return its exit code."""
    if verbosity > 0:
        traceback.print_exception(error)
    print(f'mrctprep: error: {describe_error(error)}', file=sys.stderr)
    return exit_code_of(error)
