"""The settings of one run, built once from the command line and saved as TOML.

The config is a plain dataclass with no side effects on import, so that workflow factories,
tests and child processes can all rebuild it from the TOML file that a run leaves behind.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from mrctprep import __version__


def new_run_uuid() -> str:
    """A sortable, unique run id, as NiPreps form it: ``YYYYmmdd-HHMMSS_<uuid4>``."""
    stamp = datetime.now(UTC).strftime('%Y%m%d-%H%M%S')
    return f'{stamp}_{uuid.uuid4()}'


@dataclass
class RunConfig:
    """Everything that decides what a run does; paths are absolute."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    pipelines: list[str]
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    bids_database_dir: Path | None = None
    skip_bids_validation: bool = False
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: str = 'MultiProc'
    plugin_args: dict[str, Any] = field(default_factory=dict)
    device: str = 'auto'
    skull_strip: str = 'hdbet'
    template: Path | None = None
    drr_preset: str = 'deepdrr'
    drr_angles: list[list[float]] = field(default_factory=list)
    drr_view_grid: list[float] = field(default_factory=list)
    drr_kvp: int | None = None
    drr_output: str | None = None
    drr_detector: int | None = None
    drr_pixel_size: float | None = None
    drr_sdd: float | None = None
    drr_sid: float | None = None
    drr_noise: int | None = None
    weights: dict[str, str] = field(default_factory=dict)
    train: str | None = None
    train_steps: int | None = None
    train_patch_size: list[int] = field(default_factory=list)
    checkpoint_every: int = 200
    resume: bool = False
    reference_site: str | None = None
    superres_voxel_size: float = 1.0
    superres_method: str = 'unires'
    superres_common_grid: bool = False
    superres_max_iter: int | None = None
    superres_interleaved: bool = False
    write_graph: bool = False
    dry_run: bool = False
    stop_on_first_crash: bool = False
    boilerplate_only: bool = False
    random_seed: int = 0
    verbosity: int = 0
    run_uuid: str = field(default_factory=new_run_uuid)
    version: str = __version__

    @property
    def workflow_name(self) -> str:
        """Root workflow name, version-stamped so that upgrades never reuse a stale cache."""
        major, minor = self.version.split('.')[:2]
        return f'mrctprep_{major}_{minor}_wf'

    @property
    def run_work_dir(self) -> Path:
        """Per-run scratch (config, pybids index): parallel runs never share it."""
        return self.work_dir / self.run_uuid

    def subject_log_dir(self, subject: str) -> Path:
        return self.output_dir / f'sub-{subject}' / 'log' / self.run_uuid

    def to_toml(self) -> str:
        """TOML text: paths as strings, unset values left out (TOML has no null).

        BIDS filters use JSON's ``null`` for 'entity absent', so they are kept as JSON text.
        """
        values = {}
        for key, value in dataclasses.asdict(self).items():
            if value is None:
                continue
            values[key] = str(value) if isinstance(value, Path) else value
        values['bids_filters'] = json.dumps(self.bids_filters, sort_keys=True)
        return tomli_w.dumps(values)

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        values = tomllib.loads(text)
        for key in _PATH_FIELDS & values.keys():
            values[key] = Path(values[key])
        values['bids_filters'] = json.loads(values.get('bids_filters', '{}'))
        return cls(**values)


_PATH_FIELDS = {'bids_dir', 'output_dir', 'work_dir', 'bids_database_dir', 'template'}
