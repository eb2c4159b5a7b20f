"""The settings of one run: built once from the command line, frozen, saved as TOML.

A :class:`RunConfig` has one section per concern: where the data are (:class:`InputOptions`),
how the run executes (:class:`ExecutionOptions`) and one section per pipeline family. Each
section is filled from the parsed options by name (:meth:`RunConfig.from_options`), so that
an option reaches the code that uses it without being copied by hand, and each workflow
factory receives only the sections it reads. Nothing here has side effects on import, so that
tests and child processes can rebuild a run's settings from the TOML file it leaves behind.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

import tomli_w

from mrctprep import __version__
from mrctprep.core.errors import ConfigFileError


def new_run_uuid() -> str:
    """A sortable, unique run id, as NiPreps form it: ``YYYYmmdd-HHMMSS_<uuid4>``."""
    stamp = datetime.now(UTC).strftime('%Y%m%d-%H%M%S')
    return f'{stamp}_{uuid.uuid4()}'


@dataclass(frozen=True)
class InputOptions:
    """The dataset read, what of it is selected, and where the derivatives go."""

    OPTION_PREFIX: ClassVar[str] = ''

    bids_dir: Path
    output_dir: Path
    analysis_level: str = 'participant'
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    #: ``{query: {entity: value}}``; ``None`` means 'entity absent' (JSON's null).
    bids_filters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    bids_database_dir: Path | None = None
    skip_bids_validation: bool = False


@dataclass(frozen=True)
class ExecutionOptions:
    """How the run executes: pipelines, scheduler, resources, device and what to keep."""

    OPTION_PREFIX: ClassVar[str] = ''

    work_dir: Path
    pipelines: tuple[str, ...] = ()
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: str = 'MultiProc'
    plugin_args: Mapping[str, Any] = field(default_factory=dict)
    #: a resolved torch device (``cpu``, ``cuda``, ``cuda:N``), never ``auto``
    device: str = 'cpu'
    random_seed: int = 0
    write_graph: bool = False
    dry_run: bool = False
    stop_on_first_crash: bool = False
    boilerplate_only: bool = False
    reports_only: bool = False
    verbosity: int = 0
    run_uuid: str = field(default_factory=new_run_uuid)
    version: str = __version__

    def __post_init__(self) -> None:
        # Factories choose by device (HD-BET's GPU mode, CUDA autocast): 'auto' would read as
        # the CPU everywhere.
        if self.device == 'auto':
            raise ValueError("device 'auto' must be resolved (core.devices.resolve_device) first")

    @property
    def workflow_name(self) -> str:
        """Root workflow name, version-stamped so that upgrades never reuse a stale cache."""
        major, minor = self.version.split('.')[:2]
        return f'mrctprep_{major}_{minor}_wf'

    @property
    def run_work_dir(self) -> Path:
        """Per-run scratch (config, pybids index): parallel runs never share it."""
        return self.work_dir / self.run_uuid


@dataclass(frozen=True)
class MROptions:
    """mr-preproc (and mr-harmonize, which extends it)."""

    OPTION_PREFIX: ClassVar[str] = ''

    skull_strip: str = 'hdbet'
    #: the brain template registered to; None: nilearn's MNI152 2009a
    template: Path | None = None


@dataclass(frozen=True)
class DRROptions:
    """drr: the C-arm preset and what overrides it; None/empty: the preset's value.

    Field names are the keyword arguments of
    :func:`mrctprep.imaging.drr.presets.resolve_drr_settings`.
    """

    OPTION_PREFIX: ClassVar[str] = 'drr_'

    preset: str = 'deepdrr'
    angles: tuple[tuple[float, float], ...] = ()
    grid: tuple[float, ...] = ()
    kvp: int | None = None
    output: str | None = None
    detector_pixels: int | None = None
    pixel_size_mm: float | None = None
    source_to_detector_mm: float | None = None
    source_to_isocentre_mm: float | None = None
    noise_photons: int | None = None
    #: map each view with the sim2real CycleGAN generator (not a C-arm setting)
    sim2real: bool = False

    def overrides(self) -> dict[str, Any]:
        """The fields that were set, as keyword arguments of ``resolve_drr_settings``."""
        values = dataclasses.asdict(self)
        values.pop('sim2real')
        return {name: value for name, value in values.items() if value not in (None, ())}


@dataclass(frozen=True)
class SuperresOptions:
    """superres: the output grid and the model."""

    OPTION_PREFIX: ClassVar[str] = 'superres_'

    voxel_size: float = 1.0
    method: str = 'unires'
    common_grid: bool = False
    #: None: the solver's own cap
    max_iter: int | None = None
    interleaved: bool = False


@dataclass(frozen=True)
class ModelOptions:
    """Learned models: which weights to use, and group-level training."""

    OPTION_PREFIX: ClassVar[str] = ''

    #: model name -> weights file named by the user
    weights: Mapping[str, str] = field(default_factory=dict)
    train: str | None = None
    steps: int | None = None
    train_patch_size: tuple[int, ...] = ()
    checkpoint_every: int = 200
    resume: bool = False
    reference_site: str | None = None
    #: participants of each site held out of training to choose the best weights (None: the
    #: default share)
    validation_participants: int | None = None
    #: steps between validations (None: the model's default)
    validate_every: int | None = None
    #: cyclegan: the real radiographs (domain B) and, instead of the dataset's DRRs, domain A
    real_radiographs: Path | None = None
    simulated_radiographs: Path | None = None
    train_preprocess: str = 'resize_and_crop'
    network_width: int = 64
    select_best: bool = False
    #: efficientscn: BIDS-Derivatives label maps aligned with the CTs, and the SCN grid's
    #: spacing (None: upstream's 2 mm rule)
    train_labels: Path | None = None
    train_spacing: float | None = None
    #: efficientscn: train the given localization weights further instead of keeping them;
    #: Adam's learning rate of both stages (None: the authors'); upstream's augmentation
    fine_tune_localization: bool = False
    learning_rate: float | None = None
    train_augmentation: bool = True
    #: iguane: the factor on the generators' initial 1x1 heads (1: upstream's Glorot)
    iguane_head_scale: float = 1.0
    #: ctflow: the target reconstruction's rec- label, the sources' (empty: all others)
    reference_rec: str | None = None
    source_rec: tuple[str, ...] = ()
    ctflow_size: str = 'cpu'
    ctflow_batch: int = 16
    #: ct-harmonize: CTFlow's sampling temperature and samples per slice
    ctflow_tau: float = 0.8
    ctflow_samples: int = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run does; paths are absolute."""

    inputs: InputOptions
    execution: ExecutionOptions
    mr: MROptions = field(default_factory=MROptions)
    drr: DRROptions = field(default_factory=DRROptions)
    superres: SuperresOptions = field(default_factory=SuperresOptions)
    models: ModelOptions = field(default_factory=ModelOptions)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RunConfig:
        """Each section from the options named ``<its prefix><field>``; absent ones default."""
        sections = get_type_hints(cls)
        return cls(**{name: _section_from_options(sections[name], options) for name in sections})

    def subject_log_dir(self, subject: str) -> Path:
        """Where a subject's crash files and settings of this run go (NiPreps layout)."""
        return self.inputs.output_dir / f'sub-{subject}' / 'log' / self.execution.run_uuid

    def to_toml(self) -> str:
        """TOML text, one table per section: paths as strings, unset values left out (TOML
        has no null). BIDS filters use JSON's ``null`` for 'entity absent', so they are kept
        as JSON text."""
        tables = {}
        for section in dataclasses.fields(self):
            values = dataclasses.asdict(getattr(self, section.name))
            tables[section.name] = {
                key: str(value) if isinstance(value, Path) else value
                for key, value in values.items()
                if value is not None
            }
        tables['inputs']['bids_filters'] = json.dumps(self.inputs.bids_filters, sort_keys=True)
        return tomli_w.dumps(tables)

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        return cls.from_options(options_from_toml(text))


def options_from_toml(text: str) -> dict[str, Any]:
    """The settings of a TOML text laid out as :meth:`RunConfig.to_toml` writes it, named as
    :meth:`RunConfig.from_options` reads them (``<prefix><field>``, the options' ``dest``).
    Tables and keys may be left out; an unknown one raises ``ValueError`` naming it, as does
    text that is not TOML."""
    sections = get_type_hints(RunConfig)
    options = {}
    for name, values in tomllib.loads(text).items():
        if name not in sections or not isinstance(values, dict):
            raise ValueError(f'unknown table [{name}] (tables: {", ".join(sections)})')
        section = sections[name]
        fields = {
            key: hint for key, hint in get_type_hints(section).items() if key != 'OPTION_PREFIX'
        }
        for key, value in values.items():
            if key not in fields:
                raise ValueError(f'unknown setting {key!r} in [{name}]')
            if (name, key) == ('inputs', 'bids_filters'):
                value = json.loads(value)
            options[section.OPTION_PREFIX + key] = _restore(fields[key], value)
    return options


def read_saved_options(path: Path) -> dict[str, Any]:
    """:func:`options_from_toml` of a file, such as the ``mrctprep.toml`` a run leaves in each
    subject's log folder; a file that cannot be read raises :class:`ConfigFileError`."""
    try:
        return options_from_toml(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise ConfigFileError(path, f'not a run configuration ({exc})') from exc


def _section_from_options(
    section: type[Any], options: Mapping[str, Any], prefix: str | None = None
) -> Any:
    """``section(**values)`` for the options it has fields for; lists become tuples and paths
    are restored, so that a section is the same whether built from argparse or from TOML."""
    prefix = section.OPTION_PREFIX if prefix is None else prefix
    values = {}
    for item, annotation in get_type_hints(section).items():
        key = prefix + item
        if item != 'OPTION_PREFIX' and options.get(key) is not None:
            values[item] = _restore(annotation, options[key])
    return section(**values)


def _restore(annotation: Any, value: Any) -> Any:
    """A value as its field holds it: sequences as (nested) tuples, paths as :class:`Path`."""
    if isinstance(value, list | tuple):
        return tuple(_restore(None, item) for item in value)
    if isinstance(value, str) and annotation in (Path, Path | None):
        return Path(value)
    return value
