"""BIDS input: the pybids index, validation, participant selection and per-subject queries."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pathspec
from bids import BIDSLayout
from bids.layout import BIDSLayoutIndexer, Query

from mrctprep.core.errors import (
    BidsValidationError,
    BidsValidatorUnavailableError,
    InputError,
    NotABidsDatasetError,
)

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


#: A file name's ``rec-`` entity (the reconstruction), its label in group 1.
REC_ENTITY = re.compile(r'_rec-([a-zA-Z0-9]+)')


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


#: Errors about a file's content, logged as warnings: mrctprep reads every image it processes
#: and fails that subject alone, naming the file, while the other subjects finish (and
#: placeholder datasets such as bids-examples, whose files are empty, stay usable).
_CONTENT_CODES = frozenset({'EMPTY_FILE'})
#: CT has no suffix in the BIDS schema yet (BEP024 draft): ``_ct`` files are community
#: practice, which the validator reports as NOT_INCLUDED. Only that code is waived for them;
#: a CT sidecar that is not valid JSON is still an error.
_CT_FILES = pathspec.GitIgnoreSpec.from_lines(['*_ct.nii', '*_ct.nii.gz', '*_ct.json'])


@dataclass(frozen=True)
class ValidatorIssue:
    """One issue of the BIDS validator: its code, severity and file (None: the dataset)."""

    code: str
    severity: str
    location: str | None
    message: str
    sub_code: str | None = None

    def describe(self) -> str:
        """``NOT_INCLUDED sub-01/anat/T1.nii.gz: Files with such naming scheme are ...``"""
        return f'{self.code} {self.location or "(dataset)"}: {self.message}'


def validate_bids_dir(bids_dir: Path) -> list[ValidatorIssue]:
    """Run the BIDS validator (bids-validator-deno, offline) once over the dataset.

    Its errors are logged one line each and refuse the dataset; its warnings are logged one
    line per code; the warnings are returned. What does not refuse: issues at files that
    ``.bidsignore`` lists (gitignore semantics, which the validator itself does not fully
    apply), NOT_INCLUDED for ``*_ct`` files, the content codes of :data:`_CONTENT_CODES`
    (NIfTI headers are not read by the validator either, for the same reason), HED schemas
    that cannot be loaded without the internet, and any error in a derivative dataset (the
    validator does not cover derivatives fully yet).
    """
    report = _run_validator(bids_dir)
    ignored = _read_bidsignore(bids_dir)
    derivative = read_dataset_description(bids_dir).get('DatasetType') == 'derivative'
    errors: list[ValidatorIssue] = []
    warnings: list[ValidatorIssue] = []
    for issue in _parse_issues(report):
        if issue.location and ignored.match_file(issue.location):
            continue
        if issue.code == 'NOT_INCLUDED' and _CT_FILES.match_file(issue.location or ''):
            continue
        is_error = issue.severity == 'error' and not _waived(issue, derivative)
        (errors if is_error else warnings).append(issue)
    _log_warnings(warnings)
    if errors:
        for issue in errors:
            LOGGER.error('BIDS validator: %s', issue.describe())
        codes = Counter(issue.code for issue in errors)
        raise BidsValidationError(bids_dir, [issue.describe() for issue in errors], codes)
    LOGGER.info(
        'BIDS validator %s: %s is valid (%d warning(s))',
        version('bids-validator-deno'),
        bids_dir,
        len(warnings),
    )
    return warnings


def _waived(issue: ValidatorIssue, derivative: bool) -> bool:
    """Errors that are logged as warnings instead of refusing the dataset."""
    return (
        derivative
        or issue.code in _CONTENT_CODES
        or (issue.code == 'HED_ERROR' and issue.sub_code == 'SCHEMA_LOAD_FAILED')
    )


def _run_validator(bids_dir: Path) -> dict[str, Any]:
    """The validator's JSON report. It ships as a JavaScript bundle run by the ``deno``
    wheel, so nothing is downloaded; NIfTI headers are left to mrctprep's own reader."""
    command = [
        sys.executable,
        '-c',
        'from bids_validator_deno import cli; cli()',
        str(bids_dir),
        '--format',
        'json',
        '--ignoreNiftiHeaders',
        '--no-color',
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BidsValidatorUnavailableError(str(exc)) from None
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        lines = result.stderr.strip().splitlines() or [f'exit code {result.returncode}']
        raise BidsValidatorUnavailableError(lines[-1]) from None
    return report


def _parse_issues(report: dict[str, Any]) -> list[ValidatorIssue]:
    issues = report.get('issues', {})
    code_messages = issues.get('codeMessages', {})
    parsed = []
    for raw in issues.get('issues', []):
        code = str(raw.get('code', 'UNKNOWN'))
        sub_code = raw.get('subCode')
        # The code's message says what is wrong; a sub-code names the field or check.
        text = _first_sentence(code_messages.get(code) or raw.get('issueMessage') or code)
        location = raw.get('location')
        parsed.append(
            ValidatorIssue(
                code=code,
                severity=str(raw.get('severity', 'error')),
                location=location.lstrip('/') if location else None,
                message=f'{text} ({sub_code})' if sub_code else text,
                sub_code=sub_code,
            )
        )
    return parsed


def _first_sentence(text: str, limit: int = 160) -> str:
    """The validator's messages run to paragraphs: their first sentence, on one line."""
    flat = ' '.join(text.split())
    sentence = flat.split('. ')[0].rstrip('.')
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + '...'


def _log_warnings(warnings: list[ValidatorIssue]) -> None:
    """One line per warning code (how many, and the first file); each issue at debug level."""
    by_code: dict[str, list[ValidatorIssue]] = {}
    for issue in warnings:
        by_code.setdefault(issue.code, []).append(issue)
        LOGGER.debug('BIDS validator warning: %s', issue.describe())
    for code, issues in sorted(by_code.items()):
        first = issues[0]
        LOGGER.warning(
            'BIDS validator warning %s (%d issue(s), first at %s): %s',
            code,
            len(issues),
            first.location or '(dataset)',
            first.message,
        )


def _read_bidsignore(bids_dir: Path) -> pathspec.GitIgnoreSpec:
    """The dataset's ``.bidsignore`` (gitignore semantics, as BIDS specifies)."""
    path = bids_dir / '.bidsignore'
    lines = path.read_text().splitlines() if path.is_file() else []
    return pathspec.GitIgnoreSpec.from_lines(lines)


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


def dicom_source_files(image_path: str | Path) -> list[Path]:
    """The DICOM files an image was converted from, as ``mrctprep import`` lists them in its
    sidecar (``bids::`` paths from the dataset root); [] when it did not come from DICOM or
    when any of them is gone."""
    conversion = read_sidecar(image_path).get('Conversion', {})
    if not isinstance(conversion, dict) or conversion.get('SourceFormat') != 'DICOM':
        return []
    path = Path(image_path)
    root = next((p.parent for p in path.parents if p.name.startswith('sub-')), path.parent)
    files = [root / uri.removeprefix('bids::') for uri in conversion.get('SourceFiles', [])]
    return files if files and all(f.is_file() for f in files) else []


#: The sidecar fields that say how a CT was reconstructed and dosed: its condition.
CT_CONDITION_FIELDS = ('ConvolutionKernel', 'KVP', 'Exposure', 'XRayTubeCurrent', 'CTDIvol')


def read_ct_condition(image_path: str | Path) -> dict[str, Any]:
    """A CT's kernel and dose as its sidecar gives them (``mrctprep import`` copies them from
    DICOM), with the dose fraction where ``mrctprep simulate-ct`` made it; {} without one."""
    sidecar = read_sidecar(image_path)
    condition = {key: sidecar[key] for key in CT_CONDITION_FIELDS if key in sidecar}
    simulation = sidecar.get('Simulation')
    if isinstance(simulation, dict) and 'DoseFraction' in simulation:
        condition['SimulatedDoseFraction'] = simulation['DoseFraction']
    return condition


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
