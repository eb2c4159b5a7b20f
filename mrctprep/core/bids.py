"""BIDS input: the pybids index, validation, participant selection and per-subject queries."""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids import BIDSLayout
from bids.layout import BIDSLayoutIndexer, Query
from bids_validator import BIDSValidator

from mrctprep.core.errors import InputError, NotABidsDatasetError, first_few

LOGGER = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ['.nii', '.nii.gz']

#: The named queries that pipelines ask for and that ``--bids-filter-file`` refines.
DEFAULT_QUERIES: dict[str, dict[str, Any]] = {
    't1w': {'datatype': 'anat', 'suffix': 'T1w', 'extension': IMAGE_EXTENSIONS},
    't2w': {'datatype': 'anat', 'suffix': 'T2w', 'extension': IMAGE_EXTENSIONS},
    'flair': {'datatype': 'anat', 'suffix': 'FLAIR', 'extension': IMAGE_EXTENSIONS},
    'pdw': {'datatype': 'anat', 'suffix': 'PDw', 'extension': IMAGE_EXTENSIONS},
    'ct': {'datatype': 'anat', 'suffix': 'ct', 'extension': IMAGE_EXTENSIONS},
}

#: Folders that hold no raw images; pybids' own defaults plus BIDS' ``derivatives``.
_NOT_INDEXED = ['code', 'stimuli', 'sourcedata', 'models', 'derivatives', 'work']


@dataclass(frozen=True)
class SubjectData:
    """The inputs found for one subject (and session, when the dataset has sessions)."""

    subject: str
    session: str | None
    files: Mapping[str, list[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``sub-01`` or ``sub-01_ses-A``: the BIDS prefix of this group of files."""
        ses = f'_ses-{self.session}' if self.session else ''
        return f'sub-{self.subject}{ses}'


def read_dataset_description(bids_dir: Path) -> dict[str, Any]:
    """The input's dataset_description.json; a BIDS dataset without one is refused."""
    path = bids_dir / 'dataset_description.json'
    if not path.is_file():
        raise NotABidsDatasetError(bids_dir, f'{path} not found')
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f'{path} is not valid JSON: {exc}') from None
    if not isinstance(description, dict) or 'Name' not in description:
        raise InputError(f'{path} lacks the required "Name" field')
    return description


def validate_bids_dir(bids_dir: Path) -> None:
    """Refuse files whose names are not BIDS, unless the dataset's .bidsignore lists them.

    The check covers what the workflows rely on (names and entities); pass
    ``--skip-bids-validation`` for datasets that are known to be good enough.
    """
    ignore_patterns = _read_bidsignore(bids_dir)
    validator = BIDSValidator()
    invalid = []
    for path in sorted(bids_dir.rglob('*')):
        relative = '/' + path.relative_to(bids_dir).as_posix()
        if path.is_dir() or _is_ignored(relative, ignore_patterns):
            continue
        if not validator.is_bids(relative):
            invalid.append(relative.lstrip('/'))
    if invalid:
        raise InputError(
            f'{len(invalid)} file(s) in {bids_dir} are not valid BIDS names: '
            f'{first_few(invalid)}; '
            'rename them, list them in .bidsignore, or pass --skip-bids-validation'
        )


def _read_bidsignore(bids_dir: Path) -> list[str]:
    path = bids_dir / '.bidsignore'
    # CT has no suffix in the BIDS spec yet (BEP024 draft); `_ct` is the community practice.
    patterns = ['/.*', '/sourcedata/*', '/code/*', '/derivatives/*', '/stimuli/*', '*_ct.*']
    if path.is_file():
        patterns += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return patterns


def _is_ignored(relative: str, patterns: Iterable[str]) -> bool:
    """gitignore-like matching, as the BIDS validator applies .bidsignore."""
    name = relative.rsplit('/', 1)[-1]
    for pattern in patterns:
        pattern = pattern.rstrip('/')
        if pattern.startswith('/'):
            if fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern + '/'):
                return True
        elif (
            fnmatch.fnmatch(name, pattern)
            or fnmatch.fnmatch(relative, f'*/{pattern}')
            or (f'/{pattern}/' in relative)
        ):
            return True
    return False


def load_layout(bids_dir: Path, database_dir: Path) -> BIDSLayout:
    """Index the input with pybids, keeping the SQLite index out of the (read-only) input."""
    database_dir.mkdir(parents=True, exist_ok=True)
    indexer = BIDSLayoutIndexer(validate=False, ignore=_NOT_INDEXED, index_metadata=False)
    return BIDSLayout(str(bids_dir), validate=False, indexer=indexer, database_path=database_dir)


def strip_prefix(labels: Iterable[str], prefix: str) -> list[str]:
    """``sub-01`` and ``01`` both mean subject ``01``; keep the order, drop duplicates."""
    stripped = [label[len(prefix) :] if label.startswith(prefix) else label for label in labels]
    return list(dict.fromkeys(stripped))


def select_participants(layout: BIDSLayout, requested: list[str]) -> list[str]:
    """The subjects to process: all, or the requested ones, which must all exist."""
    found = sorted(layout.get_subjects())
    if not found:
        raise InputError(f'no subjects (sub-*/ folders with images) found in {layout.root}')
    if not requested:
        return found
    unknown = [label for label in requested if label not in found]
    if unknown:
        raise InputError(
            f'participant label(s) not found in {layout.root}: '
            f'{", ".join("sub-" + u for u in unknown)}; found: '
            f'{", ".join("sub-" + f for f in found)} (is the right volume mounted?)'
        )
    return requested


def read_bids_filters(path: Path) -> dict[str, dict[str, Any]]:
    """Load ``--bids-filter-file``: ``{query: {entity: value}}`` over the named queries."""
    try:
        filters = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f'{path}: cannot read the BIDS filter file: {exc}') from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise InputError(f'{path}: a BIDS filter file maps query names to {{entity: value}}')
    unknown = sorted(set(filters) - set(DEFAULT_QUERIES))
    if unknown:
        raise InputError(
            f'{path}: unknown query name(s) {", ".join(unknown)}; '
            f'known: {", ".join(DEFAULT_QUERIES)}'
        )
    return filters


def build_queries(filters: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The default queries refined by the user's filters (``null`` = absent, ``*`` = any)."""
    queries = {}
    for name, query in DEFAULT_QUERIES.items():
        refined = {**query, **filters.get(name, {})}
        queries[name] = {key: _as_query_value(value) for key, value in refined.items()}
    return queries


def _as_query_value(value: Any) -> Any:
    if value is None:
        return Query.NONE
    if value == '*':
        return Query.ANY
    return value


def collect_subject_data(
    layout: BIDSLayout,
    subject: str,
    queries: Mapping[str, Mapping[str, Any]],
    sessions: list[str],
) -> list[SubjectData]:
    """One :class:`SubjectData` per session of the subject (one in all without sessions)."""
    subject_sessions = sorted(layout.get_sessions(subject=subject))
    if sessions:
        subject_sessions = [s for s in subject_sessions if s in sessions]
        if not subject_sessions:
            return []
    groups = []
    for session in subject_sessions or [None]:
        session_filter = {'session': session} if session else {}
        files = {
            name: sorted(
                layout.get(subject=subject, return_type='file', **{**query, **session_filter})
            )
            for name, query in queries.items()
        }
        groups.append(SubjectData(subject, session, {k: v for k, v in files.items() if v}))
    return groups


def read_sidecar(image_path: str | Path) -> dict[str, Any]:
    """The JSON sidecar beside a BIDS image ({} when there is none)."""
    path = Path(image_path)
    sidecar = path.with_name(strip_image_suffix(path.name) + '.json')
    if not sidecar.is_file():
        return {}
    content: dict[str, Any] = json.loads(sidecar.read_text())
    return content


def strip_image_suffix(name: str) -> str:
    """A file name without its image extension.

    >>> strip_image_suffix('sub-01_ct.nii.gz'), strip_image_suffix('case_1.NRRD')
    ('sub-01_ct', 'case_1')
    """
    for suffix in ('.nii.gz', '.nii', '.nrrd', '.nhdr'):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_locations(bids_dir: Path, output_dir: Path, work_dir: Path) -> None:
    """The input exists and nothing we write lands inside it (symbolic links followed)."""
    if not bids_dir.is_dir():
        raise InputError(
            f'BIDS_DIR {bids_dir} does not exist or is not a directory (is the volume mounted?)'
        )
    bids_dir, output_dir, work_dir = bids_dir.resolve(), output_dir.resolve(), work_dir.resolve()
    if output_dir == bids_dir:
        raise InputError(f'OUTPUT_DIR must differ from BIDS_DIR ({bids_dir})')
    # BIDS recommends <bids>/derivatives/<pipeline> for outputs; anywhere else inside the
    # input would add files to the raw dataset.
    if output_dir.is_relative_to(bids_dir) and not output_dir.is_relative_to(
        bids_dir / 'derivatives'
    ):
        raise InputError(
            f'OUTPUT_DIR {output_dir} lies inside BIDS_DIR {bids_dir}; '
            'choose a folder outside it (or BIDS_DIR/derivatives/mrctprep)'
        )
    if work_dir.is_relative_to(bids_dir):
        raise InputError(f'the work directory {work_dir} must not lie inside BIDS_DIR {bids_dir}')
