"""Where each participant was scanned: the batches of group-level harmonization.

The site comes from the ``site`` column of participants.tsv (the column `mrctprep demo`
writes and participants.json documents); failing that, from the scanner the raw T1w
sidecars name (Manufacturer, ManufacturerModelName, MagneticFieldStrength). A ``traveller``
column, where present, names the person: the same value at several sites marks a travelling
subject, whom validation compares across sites.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mrctprep.core.errors import InputError, first_few

LOGGER = logging.getLogger(__name__)

#: Cells that BIDS tabular files use for a missing value.
_MISSING = {'', 'n/a'}


@dataclass(frozen=True)
class ParticipantInfo:
    """One participant's site (a batch for harmonization), and age in years and traveller
    (the person, for a travelling subject), when known."""

    subject: str  # label without 'sub-'
    site: str
    age: float | None
    traveller: str | None = None


def read_participant_sites(bids_dir: Path, subjects: Iterable[str]) -> dict[str, ParticipantInfo]:
    """Site and age of each subject (labels with or without ``sub-``), keyed by label.

    Raises InputError naming the first subject whose site cannot be found.
    """
    table = _read_participants_tsv(bids_dir)
    infos = {}
    for subject in subjects:
        label = subject.removeprefix('sub-')
        row = table.get(f'sub-{label}', {})
        site = row.get('site', '')
        if site in _MISSING:
            site = _site_from_sidecars(bids_dir, label)
        traveller = row.get('traveller', '')
        infos[label] = ParticipantInfo(
            subject=label,
            site=site,
            age=_age(row.get('age', '')),
            traveller=None if traveller in _MISSING else traveller,
        )
    return infos


def choose_reference_site(sites: Mapping[str, str], requested: str | None) -> str:
    """The harmonization target: ``requested``, or else the site with the most participants.

    ``sites`` maps participant to site. Ties go to the alphabetically first site, so the
    choice does not depend on the order participants were listed in.
    """
    counts = Counter(sites.values())
    if requested is not None:
        if requested not in counts:
            raise InputError(
                f'reference site {requested!r} not found; the participants were scanned at: '
                f'{", ".join(sorted(counts))}'
            )
        LOGGER.info(
            'Reference site: %s (as requested; %d participant(s))', requested, counts[requested]
        )
        return requested
    if not counts:
        raise InputError('no participants to choose a reference site from')
    reference = min(counts, key=lambda site: (-counts[site], site))
    tied = sorted(site for site, n in counts.items() if n == counts[reference])
    why = f'tied with {", ".join(tied[1:])}, first alphabetically' if len(tied) > 1 else 'most'
    LOGGER.info(
        'Reference site: %s (%d of %d participants; %s)',
        reference,
        counts[reference],
        sum(counts.values()),
        why,
    )
    return reference


def _read_participants_tsv(bids_dir: Path) -> dict[str, dict[str, str]]:
    """participants.tsv as ``{participant_id: {column: cell}}``; empty if there is none."""
    path = bids_dir / 'participants.tsv'
    if not path.is_file():
        return {}
    # Every cell as text: 'n/a' must stay a marker, and labels like '001' must keep their zeros.
    frame = pd.read_csv(path, sep='\t', dtype=str, keep_default_na=False)
    if 'participant_id' not in frame.columns:
        raise InputError(f'{path} has no participant_id column; add it (BIDS requires it)')
    return {row['participant_id']: row for row in frame.to_dict(orient='records')}


def _age(cell: str) -> float | None:
    # BIDS allows non-numeric ages ('89+' for de-identified elders); those count as unknown.
    try:
        age = float(cell)
    except ValueError:
        return None
    return age if math.isfinite(age) else None


def _site_from_sidecars(bids_dir: Path, label: str) -> str:
    """The scanner named by the subject's raw T1w sidecars, e.g. ``Siemens_Prisma_3T``."""
    subject_dir = bids_dir / f'sub-{label}'
    sidecars = sorted(subject_dir.glob('anat/*_T1w.json')) + sorted(
        subject_dir.glob('ses-*/anat/*_T1w.json')
    )
    scanners = {scanner for path in sidecars if (scanner := _scanner(path))}
    fix = f'add a "site" column to {bids_dir / "participants.tsv"}'
    if not scanners:
        raise InputError(
            f'sub-{label}: no scanning site (no "site" in participants.tsv, and no T1w sidecar '
            f'names Manufacturer, ManufacturerModelName or MagneticFieldStrength); {fix}'
        )
    if len(scanners) > 1:
        raise InputError(
            f'sub-{label}: the T1w sidecars name different scanners '
            f'({first_few(sorted(scanners))}); {fix} to say which site the participant belongs to'
        )
    return scanners.pop()


def _scanner(sidecar: Path) -> str:
    """``Manufacturer_Model_<field>T``, alphanumerics and underscores; '' if none is recorded."""
    try:
        metadata = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f'{sidecar} is not valid JSON: {exc}') from None
    parts = [str(metadata.get(key, '')) for key in ('Manufacturer', 'ManufacturerModelName')]
    field = metadata.get('MagneticFieldStrength')
    if isinstance(field, int | float):
        # 1.5 T -> '1p5T': a dot would become an underscore and read as a separator.
        parts.append(f'{field:g}T'.replace('.', 'p'))
    return '_'.join(filter(None, (re.sub(r'[^A-Za-z0-9]+', '_', p).strip('_') for p in parts)))
