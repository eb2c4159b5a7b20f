"""``sub-<label>.html``: one subject's report, from its outputs, sidecars and logs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mrctprep import __version__
from mrctprep.reports.collect import PipelineOutputs, collect_subject_outputs
from mrctprep.reports.crashes import Failure, collect_failures
from mrctprep.reports.records import latest_run_record
from mrctprep.reports.render import markdown_blocks, write_page

LOGGER = logging.getLogger(__name__)

CITATION_FILE = Path('logs') / 'CITATION.md'


@dataclass(frozen=True)
class ModelUsed:
    """A learned model's weights as the sidecars name them."""

    weights: str
    sha256: str


def subject_report_path(output_dir: Path, subject: str) -> Path:
    return output_dir / f'sub-{subject}.html'


def write_subject_report(output_dir: Path, subject: str) -> Path:
    """``OUTPUT_DIR/sub-<subject>.html`` from what is on disk: the latest run's record,
    crash files and settings, every derivative's figures and sidecars, the methods text."""
    record = latest_run_record(output_dir / f'sub-{subject}')
    sections = collect_subject_outputs(output_dir, subject)
    failures: list[Failure] = []
    settings = ''
    if record is not None:
        failures = collect_failures(output_dir, record.run_uuid, subject)
        settings_file = output_dir / f'sub-{subject}' / 'log' / record.run_uuid / 'mrctprep.toml'
        settings = settings_file.read_text() if settings_file.is_file() else ''
    citation = output_dir / CITATION_FILE
    path = write_page(
        subject_report_path(output_dir, subject),
        'subject.html',
        subject=subject,
        record=record,
        sections=sections,
        models=_models_used(sections),
        failures=[_failure_links(failure, output_dir) for failure in failures],
        settings=settings,
        methods=markdown_blocks(citation.read_text()) if citation.is_file() else [],
        version=__version__,
        generated=datetime.now(UTC).isoformat(timespec='seconds'),
    )
    LOGGER.info('Report written: %s', path)
    return path


def _models_used(sections: list[PipelineOutputs]) -> list[ModelUsed]:
    found = {
        ModelUsed(str(sidecar['ModelWeights']), str(sidecar['ModelWeightsSHA256']))
        for section in sections
        for sidecar in section.sidecars.values()
        if 'ModelWeightsSHA256' in sidecar
    }
    return sorted(found, key=lambda model: model.weights)


def _failure_links(failure: Failure, output_dir: Path) -> dict[str, str]:
    return {
        'node': failure.node,
        'error': failure.error,
        'crash_file': failure.crash_file.relative_to(output_dir).as_posix(),
    }


def report_subjects(output_dir: Path, participant_label: tuple[str, ...] = ()) -> list[str]:
    """The subjects with a folder in ``output_dir`` (those in ``participant_label`` if any)."""
    subjects = sorted(
        path.name.removeprefix('sub-') for path in output_dir.glob('sub-*') if path.is_dir()
    )
    return [s for s in subjects if not participant_label or s in participant_label]
