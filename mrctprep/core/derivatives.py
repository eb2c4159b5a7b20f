"""BIDS-Derivatives out: file names from entities, atomic writes, and the dataset-level files."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from typing import Any

from mrctprep import __version__

#: BIDS entity order (spec appendix "Entity table"), with NiPreps' BEP014 ``from/to/mode``.
ENTITY_ORDER = (
    'sub',
    'ses',
    'task',
    'acq',
    'ce',
    'rec',
    'dir',
    'run',
    'echo',
    'part',
    'from',
    'to',
    'mode',
    'hemi',
    'space',
    'seg',
    'res',
    'den',
    'label',
    'desc',
)

#: pybids' long entity names, so that entities parsed from a source file can be passed on.
_SHORT_NAMES = {
    'subject': 'sub',
    'session': 'ses',
    'acquisition': 'acq',
    'ceagent': 'ce',
    'reconstruction': 'rec',
    'direction': 'dir',
    'resolution': 'res',
    'density': 'den',
    'description': 'desc',
    'segmentation': 'seg',
}

#: Every ``desc-`` label the suite writes, with the text that goes into descriptions.tsv.
DESCRIPTIONS = {
    'reorient': 'Voxel axes reordered to RAS+ (no resampling; world coordinates unchanged).',
    'brain': 'Brain mask (HD-BET, deepbet, or the non-zero voxels of a skull-stripped input).',
    'biasfield': 'N4 multiplicative bias field: the input T1w equals desc-preproc times it.',
    'norm': 'IGUANe model input: skull-stripped, brain median scaled to 500, background 0, '
    'cropped from the 182x218x182 MNI grid (crop box in the sidecar).',
    'flirt': 'The same transform as an FSL FLIRT matrix (reference: FSL MNI152 1 mm grid).',
    'brainmask': 'Figure: the brain mask contour over the T1w.',
    'preproc': 'Preprocessed. T1w: RAS+ voxel order and N4 bias-corrected (whole head). '
    'CT: checked to be in Hounsfield units (HU + 1024 shifted back), padding outside the '
    'reconstruction circle set to -1024 HU, int16, voxel axes in RAS+ order.',
    'pa': 'DRR, posterior-anterior view: the C-arm detector in front of the patient (orbital '
    'and angulation 0 for a supine patient), seen from the X-ray source. Oblique views are '
    'named by where the detector is and the angles, e.g. rao10cau5 (right anterior oblique 10, '
    'caudal 5 degrees); the sidecar gives the exact geometry and projection matrix.',
    'ap': 'DRR, anterior-posterior view: the detector behind the patient (orbital 180 for a '
    'supine patient), seen from the X-ray source: the left of the patient on the image right.',
    'drr': 'Figure: contact sheet of the DRR views of a CT.',
    'sim2real': 'DRR mapped to the look of real radiographs by the sim2real CycleGAN generator '
    "(drr --drr-sim2real): desc-<view>sim2real, in [0, 1]; the sidecar names the weights' "
    'SHA-256. Figure: each view beside its sim2real image.',
    'harmonized': 'Harmonized by IGUANe (the mr-harmonize pipeline): the model input mapped '
    "to the reference site's appearance (median-500 scale, background 0), on the model grid "
    "(space-) or brought back to the native grid; the sidecar names the weights' SHA-256. "
    'CT (the ct-harmonize pipeline): mapped onto the reference reconstruction by CTFlow, int16 '
    "HU on the conformed CT's grid; the sidecar names the weights' SHA-256, the source and "
    'reference conditions, the temperature, samples and seed.',
    'harmonizedstd': 'Voxel-wise SD (HU) of the CTFlow samples whose mean is desc-harmonized '
    '(ct-harmonize --ctflow-samples N > 1): where the model is unsure.',
    'ctharmonize': 'Figure: the CT, its harmonized image, their difference and the SD of the '
    'samples, in the soft-tissue and the lung window (ct-harmonize).',
    'organs': 'Figure: organ contours (organ-seg) over soft-tissue-window slices through each '
    'organ.',
    'superres': 'Super-resolved (UniRes model): every scan of the session co-registered and '
    'fitted jointly onto one isotropic grid (res- label: voxel size in mm); figures: the first '
    'scan of the contrast above the result.',
}

#: Rewritten each run (as fMRIPrep does): outputs that the BIDS schema does not cover yet.
BIDSIGNORE = [
    '*_ct.*',
    '*_drr.*',
    '*_uncertainty.*',
    '*_qc.json',
    '*_xfm.*',
    'figures/',
    'logs/',
    'models/',
    '*.html',
    'sub-*/log/',
    '*_volumes.tsv',
    '*.dcm',
]

SOFTWARE = ('nipype', 'pybids', 'nibabel', 'numpy', 'SimpleITK', 'torch')


def build_derivative_path(
    entities: Mapping[str, Any], *, suffix: str, extension: str, datatype: str | None = 'anat'
) -> PurePosixPath:
    """The relative path of a derivative, from its entities: the one place names are made.

    >>> build_derivative_path({'subject': '01', 'desc': 'reorient', 'run': 2},
    ...                       suffix='T1w', extension='.nii.gz')
    PurePosixPath('sub-01/anat/sub-01_run-2_desc-reorient_T1w.nii.gz')
    >>> build_derivative_path({'sub': '01', 'ses': 'A', 'desc': 'reorient'},
    ...                       suffix='ct', extension='.svg', datatype='figures')
    PurePosixPath('sub-01/figures/sub-01_ses-A_desc-reorient_ct.svg')
    """
    short = {_SHORT_NAMES.get(key, key): value for key, value in entities.items()}
    unknown = set(short) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f'unknown BIDS entities: {", ".join(sorted(unknown))}')
    if 'sub' not in short:
        raise ValueError('a derivative needs the "sub" entity')
    parts = [f'{key}-{short[key]}' for key in ENTITY_ORDER if short.get(key) not in (None, '')]
    name = '_'.join([*parts, suffix]) + extension
    folder = [f'sub-{short["sub"]}']
    # Figures are per subject (NiPreps layout); data files live in their session folder.
    if short.get('ses') and datatype != 'figures':
        folder.append(f'ses-{short["ses"]}')
    if datatype:
        folder.append(datatype)
    return PurePosixPath(*folder, name)


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on a hidden temporary sibling, then rename it over ``path``.

    The temporary name ends like the final one, so writers that choose a format from the
    extension (nibabel: ``.nii.gz``) behave the same. A killed run leaves no half-written
    output: only a hidden ``.tmp-*`` file, which BIDS tools ignore.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f'.tmp-{uuid.uuid4().hex[:12]}-{path.name}')
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    return write_atomically(path, lambda tmp: _write_text(tmp, text))


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def write_json_atomically(path: Path, content: Mapping[str, Any]) -> Path:
    return write_text_atomically(path, json.dumps(content, indent=2, sort_keys=False) + '\n')


def software_versions() -> dict[str, str]:
    """Versions of the software whose behaviour shapes our outputs, for sidecars."""
    versions = {'mrctprep': __version__}
    for package in SOFTWARE:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def write_derivative_description(
    bids_dir: Path, output_dir: Path, raw_description: Mapping[str, Any]
) -> Path:
    """dataset_description.json of the derivatives (BIDS common derivatives, NiPreps style)."""
    generated_by: dict[str, Any] = {
        'Name': 'mrctprep',
        'Version': __version__,
        'CodeURL': 'https://github.com/mrctprep/mrctprep',
    }
    container_type = os.environ.get('MRCTPREP_CONTAINER_TYPE')
    if container_type:
        generated_by['Container'] = {
            'Type': container_type,
            'Tag': os.environ.get('MRCTPREP_CONTAINER_TAG', f'mrctprep:{__version__}'),
        }
    source = {'URL': bids_dir.resolve().as_uri()}
    for key, target in (('DatasetDOI', 'DOI'), ('DatasetVersion', 'Version')):
        if raw_description.get(key):
            source[target] = raw_description[key]
    description = {
        'Name': f'mrctprep derivatives of {raw_description.get("Name", bids_dir.name)}',
        'BIDSVersion': '1.10.0',
        'DatasetType': 'derivative',
        'GeneratedBy': [generated_by],
        'SourceDatasets': [source],
        'DatasetLinks': {'raw': bids_dir.resolve().as_uri()},
        'HowToAcknowledge': 'Cite mrctprep and the methods listed in logs/CITATION.md.',
    }
    if raw_description.get('License'):
        description['License'] = raw_description['License']
    return write_json_atomically(output_dir / 'dataset_description.json', description)


def write_bidsignore(output_dir: Path) -> Path:
    return write_text_atomically(output_dir / '.bidsignore', '\n'.join(BIDSIGNORE) + '\n')


def write_descriptions_tsv(output_dir: Path) -> Path:
    rows = ['desc_id\tdescription'] + [f'{k}\t{v}' for k, v in sorted(DESCRIPTIONS.items())]
    return write_text_atomically(output_dir / 'descriptions.tsv', '\n'.join(rows) + '\n')


def bids_uri(path: Path | str) -> str:
    """``bids:raw:sub-01/anat/sub-01_T1w.nii.gz`` for a file inside the raw dataset.

    The dataset root is the folder that holds the ``sub-<label>`` folder.

    >>> bids_uri('/data/sub-x/ds/sub-01/anat/sub-01_T1w.nii.gz')
    'bids:raw:sub-01/anat/sub-01_T1w.nii.gz'
    """
    parts = Path(path).parts
    folders = parts[:-1]
    subject_folder = max(i for i, part in enumerate(folders) if _SUBJECT_FOLDER.fullmatch(part))
    return 'bids:raw:' + '/'.join(parts[subject_folder:])


_SUBJECT_FOLDER = re.compile(r'sub-[A-Za-z0-9]+')
