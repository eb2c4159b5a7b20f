"""CT images as DICOM, NRRD or NIfTI into a BIDS dataset, in HU (``mrctprep import``).

Sources come in folders of cases: ``Dicom_Data/case_1/*.dcm``, ``Nrrd_Data/case_1.nrrd``,
``Nifti_Data/case_1.nii.gz`` (or the cases directly in the source folder). A case is a folder
or an image file directly under the source folder or under one of its format folders
(``Dicom_Data``, ``nrrd``, ``NIfTI``…); the same case name in several formats is one case, taken
from the first format present in DICOM, NRRD, NIfTI order unless ``source_format`` names one.
Each case becomes one subject, labelled by its name (``case_1`` -> ``sub-case1``,
``sub-01_ct`` -> ``sub-01``); a case with several CT volumes (DICOM series in separate folders,
several files) gets runs. DICOM series of different studies (PatientID/StudyInstanceUID)
belong to different subjects, so such a case is refused, as is a study split over several cases.

Everything is planned and converted before anything is written: conversions go to a hidden
staging folder (``.mrctprep-import-*`` in the BIDS dataset, or beside a new one), and only when
every case has converted are the files renamed into place, so a refused case leaves the dataset
as it was, and an import killed before those renames leaves only the hidden staging folder.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nb
import nrrd
import numpy as np

from mrctprep import __version__
from mrctprep.core.bids import strip_image_suffix
from mrctprep.core.derivatives import write_json_atomically, write_text_atomically
from mrctprep.core.errors import ExistingImagesError, InputError
from mrctprep.imaging.dicom_series import (
    DicomSeries,
    DicomSeriesError,
    SkippedFile,
    convert_series,
    group_series,
    is_dicom_file,
    read_headers,
)
from mrctprep.imaging.hounsfield import (
    NotHounsfieldError,
    check_hounsfield,
    detect_padding_value,
    to_int16,
)
from mrctprep.imaging.io import ImageReadError, load_image
from mrctprep.imaging.nrrd import NRRD_EXTENSIONS, load_nrrd, nrrd_files
from mrctprep.importing import FORMATS

LOGGER = logging.getLogger(__name__)

_FORMAT_NAMES = {'dcm': 'DICOM', 'nrrd': 'NRRD', 'nii': 'NIfTI'}
#: Folders that group cases by format rather than being cases: Dicom_Data, NRRD, nifti-files…
_FORMAT_FOLDER = re.compile(r'(dicom|dcm|nrrd|nifti|nii)s?([ _-]?(data|files|images))?', re.I)
_SUBJECT_PREFIX = re.compile(r'sub-([A-Za-z0-9]+)')


@dataclass(frozen=True)
class SourceImage:
    """One CT volume to import: a DICOM series, or a NRRD or NIfTI file."""

    format: str
    case: str
    #: What sourcedata/ keeps: the series' files, or the image (and a detached NRRD's data).
    files: tuple[Path, ...]
    series: DicomSeries | None = None
    #: Files of the series' folders that could not be read, for the gap check.
    unreadable: tuple[SkippedFile, ...] = ()

    def describe(self, source: Path) -> str:
        if self.series is None:
            return _relative(self.files[0], source)
        folders = sorted(_relative(folder, source) for folder in self.series.folders)
        return f'{", ".join(folders)}: {self.series.describe()}'


@dataclass(frozen=True)
class PlannedCT:
    """Where one source image goes: ``sub-<subject>[_run-<run>]_ct``."""

    subject: str
    run: int | None
    source: SourceImage

    @property
    def stem(self) -> str:
        run = f'_run-{self.run}' if self.run else ''
        return f'sub-{self.subject}{run}_ct'

    @property
    def image_path(self) -> Path:
        return Path(f'sub-{self.subject}', 'anat', f'{self.stem}.nii.gz')

    @property
    def sourcedata_path(self) -> Path:
        return Path('sourcedata', f'sub-{self.subject}', self.stem)


@dataclass
class _Case:
    name: str
    images: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))


def import_dataset(
    source: Path, bids_dir: Path, *, source_format: str = 'auto', overwrite: bool = False
) -> list[PlannedCT]:
    """Import every case of ``source`` into ``bids_dir`` (created or extended); see the module.

    Raises :class:`InputError` (one line, naming the case and the problem) before anything
    is written when a case cannot be imported, or :class:`ExistingImagesError` when a subject
    already has a CT and ``overwrite`` is false.
    """
    source, bids_dir = Path(os.path.abspath(source)), Path(os.path.abspath(bids_dir))
    _check_locations(source, bids_dir)
    plan = plan_import(source, source_format)
    _check_conflicts(plan, bids_dir, overwrite)

    # Staged beside the final files (one file system, so renames are atomic); a new
    # dataset folder is made only once everything has converted.
    staging_parent = bids_dir if bids_dir.is_dir() else bids_dir.parent
    staging_parent.mkdir(parents=True, exist_ok=True)
    staging = staging_parent / f'.mrctprep-import-{uuid.uuid4().hex[:12]}'
    try:
        for planned in plan:
            _stage(planned, source, staging)
        _commit(plan, staging, bids_dir, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return plan


def plan_import(source: Path, source_format: str = 'auto') -> list[PlannedCT]:
    """Find the cases, choose each one's images and name them; read no pixel data."""
    cases = _find_cases(source)
    formats = FORMATS if source_format == 'auto' else (source_format,)
    plan: list[PlannedCT] = []
    labels: dict[str, str] = {}
    studies: dict[tuple[str, str], str] = {}
    for case in sorted(cases.values(), key=lambda c: c.name):
        chosen = next((f for f in formats if case.images.get(f)), None)
        if chosen is None:
            LOGGER.info(
                '%s: no %s image; not imported',
                case.name,
                ' or '.join(_FORMAT_NAMES[f] for f in formats),
            )
            continue
        ignored = [_FORMAT_NAMES[f] for f in FORMATS if f != chosen and case.images.get(f)]
        if ignored:
            LOGGER.info(
                '%s: using its %s image(s), not the %s copy',
                case.name,
                _FORMAT_NAMES[chosen],
                ' or '.join(ignored),
            )
        if chosen == 'dcm':
            images = _dicom_images(case, source, studies)
        elif chosen == 'nrrd':
            images = [SourceImage('nrrd', case.name, _nrrd_files(p)) for p in case.images['nrrd']]
        else:
            images = [SourceImage('nii', case.name, (p,)) for p in case.images['nii']]

        label = subject_label(case.name)
        if label in labels:
            raise InputError(
                f'cases {labels[label]} and {case.name} would both become sub-{label}; '
                'rename one of them'
            )
        labels[label] = case.name
        for run, image in enumerate(images, start=1):
            plan.append(PlannedCT(label, run if len(images) > 1 else None, image))
    if not plan:
        raise InputError(
            f'no {" or ".join(_FORMAT_NAMES[f] for f in formats)} CT images found in {source}'
        )
    return plan


def subject_label(case: str) -> str:
    """The BIDS subject label of a case name: ``sub-`` labels kept, other names alphanumeric.

    >>> subject_label('case_1'), subject_label('sub-01_ct'), subject_label('Patient 7')
    ('case1', '01', 'Patient7')
    """
    match = _SUBJECT_PREFIX.match(case)
    label = match.group(1) if match else re.sub(r'[^A-Za-z0-9]', '', case)
    if not label:
        raise InputError(f'case {case!r}: no letters or digits to make a BIDS subject label from')
    return label


def convert_source(image: SourceImage, *, name: str) -> tuple[nb.Nifti1Image, dict[str, Any]]:
    """Convert one source image to an int16 HU NIfTI and its BIDS sidecar.

    Raises :class:`InputError` naming ``name`` when the image is unreadable or not HU.
    """
    try:
        if image.series is not None:
            volume = convert_series(image.series, name=name, unreadable=image.unreadable)
            for message in volume.warnings:
                LOGGER.warning('%s: %s', name, message)
            img, sidecar, padding = volume.image, volume.sidecar, volume.padding_value
        else:
            img, sidecar, padding = _convert_file(image, name=name)
        return _in_hounsfield_units(img, sidecar, padding, name=name)
    except (DicomSeriesError, ImageReadError, NotHounsfieldError) as exc:
        raise InputError(str(exc)) from None


def _find_cases(source: Path) -> dict[str, _Case]:
    cases: dict[str, _Case] = {}
    detached_data: set[Path] = set()
    for path in sorted(_walk(source)):
        image_format = _image_format(path)
        if image_format is None or path in detached_data:
            continue
        parts = path.relative_to(source).parts
        if len(parts) > 1 and _FORMAT_FOLDER.fullmatch(parts[0]):
            parts = parts[1:]
        if len(parts) > 1:
            case = parts[0]
        elif image_format == 'dcm':
            case = source.name
        else:
            case = strip_image_suffix(path.name)
        if image_format == 'nrrd':
            detached_data.update(_nrrd_files(path)[1:])
        cases.setdefault(case, _Case(case)).images[image_format].append(path)
    return cases


def _walk(folder: Path) -> Iterable[Path]:
    for root, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith('.')]
        yield from (Path(root, f) for f in files if not f.startswith('.'))


def _image_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(('.nii', '.nii.gz')):
        return 'nii'
    if name.endswith(NRRD_EXTENSIONS):
        return 'nrrd'
    if name.endswith(('.json', '.txt', '.md', '.tsv', '.csv', '.raw', '.raw.gz', '.gz')):
        return None
    return 'dcm' if is_dicom_file(path) else None


def _nrrd_files(path: Path) -> tuple[Path, ...]:
    try:
        return tuple(nrrd_files(path))
    except ImageReadError as exc:
        raise InputError(str(exc)) from None


def _dicom_images(
    case: _Case, source: Path, studies: dict[tuple[str, str], str]
) -> list[SourceImage]:
    """The case's CT volumes, one per series; unusable series are reported and skipped."""
    files, unreadable = read_headers(case.images['dcm'])
    for skipped in unreadable:
        LOGGER.warning(
            '%s: skipped %s: %s', case.name, _relative(skipped.path, source), skipped.reason
        )
    usable, refused = [], []
    for series in group_series(files):
        reason = series.unusable_reason()
        if reason:
            refused.append(f'{series.describe()}: {reason}')
        else:
            usable.append(series)
    if not usable:
        why = '; '.join(refused) or 'no readable DICOM file'
        raise InputError(f'{case.name}: no CT volume to import ({why})')
    for reason in refused:
        LOGGER.warning('%s: skipped %s', case.name, reason)

    _check_one_series_per_folder(case.name, usable, source)
    case_studies = {f.study_key for s in usable for f in s.files if f.study_key is not None}
    if len(case_studies) > 1:
        raise InputError(
            f'{case.name}: holds CT series of {len(case_studies)} different studies '
            '(PatientID/StudyInstanceUID); put each study in its own case folder'
        )
    for study in case_studies:
        if study in studies:
            raise InputError(
                f'cases {studies[study]} and {case.name} hold series of the same study '
                '(PatientID/StudyInstanceUID); put them in one case folder'
            )
        studies[study] = case.name
    return [
        SourceImage(
            'dcm',
            case.name,
            tuple(dict.fromkeys(f.path for f in series.files)),  # frames share a file
            series,
            tuple(s for s in unreadable if s.path.parent in series.folders),
        )
        for series in usable
    ]


def _check_one_series_per_folder(case: str, series: Sequence[DicomSeries], source: Path) -> None:
    by_folder: dict[Path, list[DicomSeries]] = defaultdict(list)
    for one in series:
        for folder in one.folders:
            by_folder[folder].append(one)
    for folder, mixed in by_folder.items():
        if len(mixed) > 1:
            described = '; '.join(s.describe() for s in mixed)
            raise InputError(
                f'{case}: {len(mixed)} CT series mixed in one folder '
                f'({_relative(folder, source)}: {described}); put each series in its own folder'
            )


def _convert_file(
    image: SourceImage, *, name: str
) -> tuple[nb.Nifti1Image, dict[str, Any], float | None]:
    path = image.files[0]
    if image.format == 'nrrd':
        original = load_nrrd(path)
        header = nrrd.read_header(str(path))
        conversion = {
            'SourceFormat': 'NRRD',
            'Reader': f'pynrrd {nrrd.__version__}',
            'NRRDSpace': header.get('space'),
            'DetachedHeader': len(image.files) > 1,
        }
    else:
        original = load_image(path)
        conversion = {'SourceFormat': 'NIfTI', 'Reader': f'nibabel {nb.__version__}'}
    conversion['OriginalDataType'] = str(original.get_data_dtype())
    data = original.get_fdata(dtype=np.float32)
    padding = detect_padding_value(data)
    hu = to_int16(data, name=name)
    conversion['ValuesRounded'] = bool(np.any(hu != data))
    img = nb.Nifti1Image(hu, original.affine)
    qform_code = int(original.header['qform_code']) or 1
    sform_code = int(original.header['sform_code']) or 1
    img.set_qform(original.affine, code=qform_code)
    img.set_sform(original.affine, code=sform_code)
    img.header.set_xyzt_units('mm')
    sidecar: dict[str, Any] = {'Modality': 'CT', 'Units': 'HU'}
    if padding is not None:
        sidecar['PixelPaddingValue'] = padding
    sidecar.update(
        ConversionSoftware='mrctprep', ConversionSoftwareVersion=__version__, Conversion=conversion
    )
    return img, sidecar, padding


def _in_hounsfield_units(
    img: nb.Nifti1Image, sidecar: dict[str, Any], padding: float | None, *, name: str
) -> tuple[nb.Nifti1Image, dict[str, Any]]:
    """Check the values are HU (padding aside); remove an unambiguous +1024 offset."""
    data = np.asanyarray(img.dataobj)
    not_padding = data != padding if padding is not None else np.ones(data.shape, bool)
    check = check_hounsfield(data[not_padding], name=name)
    sidecar['Conversion'].update(check.to_metadata())
    if check.offset:
        LOGGER.warning('%s: %s', name, check.reason)
        shifted = np.where(not_padding, data.astype(np.float32) + check.offset, data)
        fixed = nb.Nifti1Image(to_int16(shifted, name=name), img.affine, img.header)
        return fixed, sidecar
    return img, sidecar


def _stage(planned: PlannedCT, source: Path, staging: Path) -> None:
    """Convert one image into the staging folder, with its sidecar and source copies."""
    name = planned.source.describe(source)
    img, sidecar = convert_source(planned.source, name=name)
    files = planned.source.files
    common = Path(os.path.commonpath([f.parent for f in files]))
    copies = [planned.sourcedata_path / f.relative_to(common) for f in files]
    sidecar['Conversion']['SourceFiles'] = [f'bids::{c.as_posix()}' for c in copies]
    image_path = staging / planned.image_path
    image_path.parent.mkdir(parents=True, exist_ok=True)
    img.set_data_dtype(np.int16)
    img.to_filename(image_path)
    write_json_atomically(image_path.with_name(f'{planned.stem}.json'), sidecar)
    for original, copy in zip(files, copies, strict=True):
        (staging / copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, staging / copy)
    LOGGER.info('%s -> %s', name, planned.image_path)


def _commit(plan: Sequence[PlannedCT], staging: Path, bids_dir: Path, overwrite: bool) -> None:
    """Rename the staged files into place and update the dataset-level files."""
    bids_dir.mkdir(exist_ok=True)
    subjects = sorted({p.subject for p in plan})
    if overwrite:
        for subject in subjects:
            for old in _existing_cts(bids_dir, subject):
                old.unlink()
                old.with_name(strip_image_suffix(old.name) + '.json').unlink(missing_ok=True)
            for old in (bids_dir / 'sourcedata' / f'sub-{subject}').glob(f'sub-{subject}*_ct'):
                shutil.rmtree(old)
    for planned in plan:
        for staged in (staging / planned.image_path).parent.glob(f'{planned.stem}.*'):
            target = bids_dir / staged.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
        target = bids_dir / planned.sourcedata_path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / planned.sourcedata_path, target)
    _update_participants(bids_dir, subjects)
    _write_dataset_files(bids_dir)


def _check_locations(source: Path, bids_dir: Path) -> None:
    if not source.is_dir():
        raise InputError(f'{source}: no such folder (the source must be a folder of cases)')
    if bids_dir.exists() and not bids_dir.is_dir():
        raise InputError(f'{bids_dir} exists and is not a folder')
    if bids_dir == source or source in bids_dir.parents:
        raise InputError(
            f'the BIDS dataset {bids_dir} must not lie inside the source folder {source}'
        )
    if bids_dir in source.parents and source.relative_to(bids_dir).parts[0] != 'sourcedata':
        raise InputError(
            f'the source folder {source} lies inside the BIDS dataset {bids_dir}; only its '
            'sourcedata/ may hold it'
        )


def _check_conflicts(plan: Sequence[PlannedCT], bids_dir: Path, overwrite: bool) -> None:
    if overwrite:
        return
    existing = [
        path.relative_to(bids_dir)
        for subject in sorted({p.subject for p in plan})
        for path in _existing_cts(bids_dir, subject)
    ]
    if existing:
        raise ExistingImagesError(bids_dir, existing)


def _existing_cts(bids_dir: Path, subject: str) -> list[Path]:
    anat = bids_dir / f'sub-{subject}' / 'anat'
    return sorted(p for p in anat.glob(f'sub-{subject}*_ct.nii*') if p.is_file())


def _update_participants(bids_dir: Path, subjects: Iterable[str]) -> None:
    """Add the new subjects to participants.tsv ('n/a' in its other columns)."""
    path = bids_dir / 'participants.tsv'
    rows: list[dict[str, str]] = []
    columns = ['participant_id']
    if path.is_file():
        reader = csv.DictReader(io.StringIO(path.read_text()), delimiter='\t')
        columns = list(reader.fieldnames or columns)
        rows = list(reader)
    known = {row['participant_id'] for row in rows}
    for subject in subjects:
        if f'sub-{subject}' not in known:
            rows.append(
                {column: 'n/a' for column in columns} | {'participant_id': f'sub-{subject}'}
            )
    lines = ['\t'.join(columns)] + ['\t'.join(row.get(c, 'n/a') for c in columns) for row in rows]
    write_text_atomically(path, '\n'.join(lines) + '\n')


def _write_dataset_files(bids_dir: Path) -> None:
    description = bids_dir / 'dataset_description.json'
    if not description.is_file():
        write_json_atomically(
            description,
            {
                'Name': bids_dir.name,
                'BIDSVersion': '1.10.0',
                'DatasetType': 'raw',
                'GeneratedBy': [
                    {'Name': 'mrctprep', 'Version': __version__, 'Description': 'mrctprep import'}
                ],
            },
        )
    bidsignore = bids_dir / '.bidsignore'
    lines = bidsignore.read_text().splitlines() if bidsignore.is_file() else []
    # CT has no BIDS suffix yet (BEP024 draft): `_ct` is the community practice.
    if '*_ct.*' not in (line.strip() for line in lines):
        write_text_atomically(bidsignore, '\n'.join([*lines, '*_ct.*']) + '\n')


def _relative(path: Path, source: Path) -> str:
    try:
        return path.relative_to(source.parent).as_posix()
    except ValueError:
        return str(path)
