"""``group.html``: every subject on one page, for a QC session run from the browser.

One row per subject (and session) with its thumbnail, site, pipelines and a link to its
report; the group tables, sortable and filterable; per-site plots of the image measures and
of harmonization; and QC rating (pass / fail / unsure and a comment per subject and pipeline)
kept in the page and exported as a TSV by the page's own script: no server, no network.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nb
import numpy as np
from bids.layout import parse_file_entities

from mrctprep import __version__
from mrctprep.core.config import InputOptions
from mrctprep.core.errors import InputError
from mrctprep.group.sites import read_participant_sites
from mrctprep.reports.collect import PipelineOutputs, collect_subject_outputs
from mrctprep.reports.crashes import collect_failures
from mrctprep.reports.plots import harmonization_by_site, site_distributions, thumbnail_uri
from mrctprep.reports.records import latest_run_record
from mrctprep.reports.render import write_page
from mrctprep.reports.subject import report_subjects, subject_report_path

LOGGER = logging.getLogger(__name__)

GROUP_REPORT = 'group.html'
#: (low, high) HU of the CT thumbnails: the soft-tissue window.
CT_THUMBNAIL_WINDOW = (-160.0, 240.0)


@dataclass
class GroupRow:
    """One subject's session (or the subject, without sessions) on the group page."""

    participant_id: str
    session_id: str
    site: str
    report: str
    pipelines: list[str] = field(default_factory=list)
    failures: int = 0
    thumbnail: str = ''
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        session = '' if self.session_id == 'n/a' else f'_{self.session_id}'
        return f'{self.participant_id}{session}'


@dataclass(frozen=True)
class Table:
    """A TSV of the output folder, as the page shows it."""

    name: str
    header: list[str]
    rows: list[list[str]]


def write_group_report(inputs: InputOptions) -> Path:
    """``OUTPUT_DIR/group.html`` from the participant outputs and the group tables."""
    output_dir = inputs.output_dir
    subjects = report_subjects(output_dir, inputs.participant_label)
    sites = _sites(inputs.bids_dir, subjects)
    rows = [row for subject in subjects for row in _subject_rows(output_dir, subject, sites)]
    measures = sorted({name for row in rows for name in row.measures})
    tables = [_read_table(path) for path in sorted(output_dir.glob('group_*.tsv'))]
    path = write_page(
        output_dir / GROUP_REPORT,
        'group.html',
        rows=rows,
        measures=measures,
        tables=tables,
        measure_plot=_measure_plot(rows, measures),
        harmonization_plot=_harmonization_plot(output_dir / 'group_harmonization.tsv'),
        version=__version__,
        generated=datetime.now(UTC).isoformat(timespec='seconds'),
    )
    LOGGER.info('Group report written: %s (%d rows)', path, len(rows))
    return path


def _sites(bids_dir: Path, subjects: list[str]) -> dict[str, str]:
    """Each subject's site, or ``n/a`` for all when the dataset does not say."""
    try:
        return {
            label: info.site for label, info in read_participant_sites(bids_dir, subjects).items()
        }
    except InputError as exc:
        LOGGER.info('no sites on the group page: %s', exc)
        return {}


def _subject_rows(output_dir: Path, subject: str, sites: dict[str, str]) -> list[GroupRow]:
    """A row per session the subject's outputs (or latest run record) have."""
    record = latest_run_record(output_dir / f'sub-{subject}')
    sections = collect_subject_outputs(output_dir, subject)
    report = subject_report_path(output_dir, subject)
    rows: dict[str, GroupRow] = {}

    def row_for(session: str | None) -> GroupRow:
        session_id = f'ses-{session}' if session else 'n/a'
        if session_id not in rows:
            rows[session_id] = GroupRow(
                f'sub-{subject}',
                session_id,
                sites.get(subject, 'n/a'),
                report.name if report.is_file() else '',
            )
        return rows[session_id]

    for session in record.sessions if record else []:
        row_for(session.label.partition('_ses-')[2] or None).pipelines = list(session.pipelines)
    for section in sections:
        _add_section(section, output_dir, row_for)
    if record is not None:
        failed = len(collect_failures(output_dir, record.run_uuid, subject))
        for row in rows.values():
            row.failures = failed
    return [rows[key] for key in sorted(rows)]


def _add_section(
    section: PipelineOutputs, output_dir: Path, row_for: Callable[[str | None], GroupRow]
) -> None:
    """A pipeline's numeric key figures as measures, and its image as the thumbnail."""
    for item in section.key_figures:
        value = _number(item.value)
        if value is not None:
            row = row_for(parse_file_entities(item.file).get('session'))
            row.measures[f'{section.pipeline}: {item.name}'] = value
    for file in section.files:
        entities = parse_file_entities(file)
        # The native-space image: preprocessed, or only reoriented.
        wanted = entities.get('desc') in ('preproc', 'reorient') and 'space' not in entities
        row = row_for(entities.get('session'))
        if wanted and not row.thumbnail and file.endswith('.nii.gz'):
            row.thumbnail = _thumbnail(output_dir / file, is_ct=entities['suffix'] == 'ct')
        if section.pipeline not in row.pipelines:
            row.pipelines.append(section.pipeline)


def _number(text: str) -> float | None:
    """A key figure's value as a number, if it is one (JSON booleans are not)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _thumbnail(image_file: Path, *, is_ct: bool) -> str:
    """The middle axial plane of an RAS+ image, superior view, anterior at the top."""
    image = nb.as_closest_canonical(nb.load(image_file))
    plane = np.asarray(image.dataobj[:, :, image.shape[2] // 2], dtype=np.float32)
    picture = np.flipud(plane.T)
    if is_ct:
        return thumbnail_uri(picture, CT_THUMBNAIL_WINDOW)
    foreground = picture[picture != 0]
    low, high = np.percentile(foreground, [1, 99]) if foreground.size else (0.0, 1.0)
    return thumbnail_uri(picture, (float(low), float(max(high, low + 1e-6))))


def _read_table(path: Path) -> Table:
    with path.open(newline='') as handle:
        lines = list(csv.reader(handle, delimiter='\t'))
    return Table(path.name, lines[0] if lines else [], lines[1:])


def _measure_plot(rows: list[GroupRow], measures: list[str]) -> str:
    """Per-site distributions of each measure that varies across rows ('' if none)."""
    by_measure: dict[str, dict[str, list[float]]] = {}
    for measure in measures:
        values = [row.measures[measure] for row in rows if measure in row.measures]
        if len(values) < 2 or len(set(values)) < 2:
            continue
        by_site: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            if measure in row.measures:
                by_site[row.site].append(row.measures[measure])
        by_measure[measure] = dict(sorted(by_site.items()))
    return site_distributions(by_measure) if by_measure else ''


def _harmonization_plot(table_file: Path) -> str:
    """Regional means relative to their region's mean, by site, per method ('' if none)."""
    if not table_file.is_file():
        return ''
    table = _read_table(table_file)
    column = {name: index for index, name in enumerate(table.header)}
    relative: dict[str, dict[str, list[float]]] = {}
    for method in ('raw', 'combat', 'iguane'):
        cells = [(r[column['site']], r[column['region']], r[column[method]]) for r in table.rows]
        known = [(site, region, float(v)) for site, region, v in cells if v not in ('', 'n/a')]
        if not known:
            continue
        region_means = defaultdict(list)
        for _, region, value in known:
            region_means[region].append(value)
        means = {region: float(np.mean(values)) for region, values in region_means.items()}
        by_site: dict[str, list[float]] = defaultdict(list)
        for site, region, value in known:
            by_site[site].append(value / means[region] if means[region] else 0.0)
        relative[method] = dict(sorted(by_site.items()))
    return harmonization_by_site(relative) if relative else ''
