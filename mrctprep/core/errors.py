"""The errors that mrctprep raises for problems a user can fix.

Each error states what went wrong in one line and carries the facts as attributes. It names no
command-line option: the command line (:mod:`mrctprep.cli.errors`) chooses the exit code and
adds the option that fixes it, so the library reads the same from Python, a notebook or a CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class MrctprepError(Exception):
    """A problem the user can fix; shown as one line, without a traceback unless ``-v``."""


class InputError(MrctprepError):
    """The BIDS input, labels, filters or output locations are unusable."""


class NotABidsDatasetError(InputError):
    """The input folder is not a BIDS dataset."""

    def __init__(self, bids_dir: Path, reason: str):
        self.bids_dir, self.reason = bids_dir, reason
        super().__init__(f'{reason}: {bids_dir} is not a BIDS dataset')


class BidsValidationError(InputError):
    """The BIDS validator found errors: ``errors`` holds one line per error (code, file,
    message), ``codes`` how many of each code; the message counts them by code."""

    def __init__(self, bids_dir: Path, errors: Sequence[str], codes: dict[str, int]):
        self.bids_dir, self.errors, self.codes = bids_dir, list(errors), dict(codes)
        counts = ', '.join(f'{code}: {count}' for code, count in sorted(codes.items()))
        super().__init__(
            f'the BIDS validator found {len(self.errors)} error(s) in {bids_dir} ({counts})'
        )


class WorkflowBuildError(MrctprepError):
    """The workflow could not be built from the selected pipelines and inputs."""


class ResourceError(MrctprepError):
    """A required resource (model weights, template, device) is missing or unusable."""


class BidsValidatorUnavailableError(ResourceError):
    """The BIDS validator (bids-validator-deno) could not be run or gave no report."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f'the BIDS validator could not run: {reason}')


class DeviceUnavailableError(ResourceError):
    """A torch device that was asked for by name cannot be used."""

    def __init__(self, requested: str, reason: str):
        self.requested, self.reason = requested, reason
        super().__init__(f'device {requested}: {reason}')


class WeightsNotFoundError(ResourceError):
    """No weights file for a model: not at the path given, nor anywhere on the search path."""

    def __init__(self, model: str, searched: Sequence[Path], given: Path | None = None):
        self.model, self.searched, self.given = model, list(searched), given
        if given is not None:
            message = f'no weights file {given} for model {model!r}'
        else:
            places = ', '.join(str(path) for path in self.searched)
            message = f'no weights for model {model!r} (looked for {places})'
        super().__init__(message)


class InsufficientMemoryError(ResourceError):
    """A training or inference step would need more memory than the device has.

    ``fitting_patch`` is the largest training patch side that would fit (None when none does,
    or when the step has no patch size to choose).
    """

    def __init__(
        self, what: str, needed: str, available: str, device: str, fitting_patch: int | None
    ):
        self.what, self.needed, self.available = what, needed, available
        self.device, self.fitting_patch = device, fitting_patch
        super().__init__(f'{what} needs about {needed}; {available} available on {device}')


class CheckpointError(InputError):
    """A training checkpoint to resume from is missing or belongs to another training."""

    def __init__(self, checkpoint: Path, reason: str):
        self.checkpoint, self.reason = checkpoint, reason
        super().__init__(f'{checkpoint}: {reason}')


class NoModelInputsError(InputError):
    """None of the participant-level outputs that group-level harmonization works on."""

    def __init__(self, output_dir: Path, pattern: str):
        self.output_dir, self.pattern = output_dir, pattern
        super().__init__(
            f'no mr-preproc model inputs ({pattern}) in {output_dir} for the selected participants'
        )


class TooFewRadiographsError(InputError):
    """A CycleGAN domain has fewer readable training images than training needs."""

    def __init__(self, domain: str, source: Path, readable: int, needed: int):
        self.domain, self.source, self.readable, self.needed = domain, source, readable, needed
        super().__init__(
            f'{readable} readable {domain} radiograph(s) to train on in {source}; '
            f'at least {needed} needed'
        )


class NoReconstructionPairsError(InputError):
    """No CT has both the reference reconstruction and another one of the same acquisition."""

    def __init__(self, bids_dir: Path, reference_rec: str, found: list[str]):
        self.bids_dir, self.reference_rec, self.found = bids_dir, reference_rec, found
        super().__init__(
            f'no pairs of a rec-{reference_rec} reference and a source reconstruction in '
            f'{bids_dir} (rec- labels found: {", ".join(found) or "none"})'
        )


class ImplausibleBrainMaskError(MrctprepError, ValueError):
    """A brain extraction returned a mask whose volume no human brain has."""

    def __init__(self, method: str, volume_ml: float, plausible_ml: tuple[float, float]):
        self.method, self.volume_ml, self.plausible_ml = method, volume_ml, plausible_ml
        low, high = plausible_ml
        super().__init__(
            f'the {method} brain mask is {volume_ml:.0f} ml, not a plausible human brain '
            f'({low:g}-{high:g} ml)'
        )


def first_few(items: Sequence[str], shown: int = 3) -> str:
    """Items for a one-line message: ``a, b, c (and 4 more)``.

    >>> first_few(['a', 'b', 'c', 'd', 'e'])
    'a, b, c (and 2 more)'
    """
    rest = f' (and {len(items) - shown} more)' if len(items) > shown else ''
    return ', '.join(items[:shown]) + rest


class ExistingImagesError(InputError):
    """An import would replace CT images that subjects of the BIDS dataset already have;
    ``existing`` holds their paths relative to ``bids_dir``."""

    def __init__(self, bids_dir: Path, existing: Sequence[Path]):
        self.bids_dir, self.existing = bids_dir, list(existing)
        shown = first_few([path.as_posix() for path in self.existing])
        super().__init__(f'{bids_dir} already has CT images for these subjects ({shown})')


class ConfigFileError(InputError):
    """A saved run configuration (TOML) that cannot be read back."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f'{path}: {reason}')
