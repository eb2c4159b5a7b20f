"""A subject's outputs, grouped by the pipeline that wrote them, with their key figures.

Only files are read here (names, sidecars, a mask's voxel count): a report is made from what
the participant level left, never by running any of it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from bids.layout import parse_file_entities

#: Pipelines in the order their sections appear; a file belongs to the first that claims it.
SECTION_TITLES = {
    'reorient': 'Reorientation (reorient)',
    'mr-preproc': 'MR preprocessing (mr-preproc)',
    'mr-harmonize': 'MR harmonization (mr-harmonize)',
    'ct-ingest': 'CT ingest (ct-ingest)',
    'superres': 'Super-resolution (superres)',
    'drr': 'Synthetic X-rays (drr)',
}

_MR_PREPROC_DESCS = {'preproc', 'brain', 'biasfield', 'norm', 'flirt', 'brainmask', None}


def _claims(entities: Mapping[str, Any]) -> str | None:
    """The pipeline that writes a file with these BIDS entities (None: none of ours)."""
    desc, suffix = entities.get('desc'), entities.get('suffix')
    if desc == 'reorient':
        return 'reorient'
    if desc == 'harmonized':
        return 'mr-harmonize'
    if desc == 'superres':
        return 'superres'
    if suffix == 'drr' or desc == 'drr':
        return 'drr'
    if suffix == 'ct' and desc == 'preproc':
        return 'ct-ingest'
    if suffix in ('T1w', 'mask', 'xfm') and desc in _MR_PREPROC_DESCS:
        return 'mr-preproc'
    return None


#: The sidecar fields shown as each pipeline's key figures (``A.B``: field B inside A).
KEY_FIELDS = {
    'reorient': ('OriginalOrientation', 'OriginalShape'),
    'mr-preproc': (
        'OriginalOrientation',
        'OriginalShape',
        'SkullStripMethod',
        'TestTimeAugmentation',
        'Device',
        'BiasCorrection.ElapsedIterations',
        'BiasCorrection.FinalConvergence',
        'RegistrationTemplate',
        'RotationDegrees',
        'TranslationMM',
        'IntensityScale',
    ),
    'mr-harmonize': ('HarmonizationModel', 'ModelWeights', 'ModelWeightsSHA256', 'Device'),
    'ct-ingest': (
        'HounsfieldCheck',
        'HounsfieldOffsetApplied',
        'ValuesRounded',
        'PaddingValue',
        'PaddingVoxels',
        'PaddingSetTo',
        'OriginalOrientation',
        'OriginalShape',
        'BodyPartExamined',
    ),
    'superres': (
        'Method',
        'Inputs',
        'VoxelSize',
        'GridShape',
        'Iterations',
        'Converged',
        'Noise',
    ),
    'drr': (
        'DRRView',
        'DRRPreset',
        'OrbitalAngleDegrees',
        'AngulationAngleDegrees',
        'SourceToDetectorDistanceMM',
        'SourceToIsocentreDistanceMM',
        'DetectorPixels',
        'PixelSpacingMM',
        'Spectrum.MeanEnergyKeV',
    ),
}


@dataclass(frozen=True)
class KeyFigure:
    """One number or fact from a derivative's sidecar (or computed from the file itself)."""

    file: str
    name: str
    value: str


@dataclass
class PipelineOutputs:
    """What one pipeline left for a subject: figures, data files and their key figures."""

    pipeline: str
    title: str
    figures: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    key_figures: list[KeyFigure] = field(default_factory=list)
    sidecars: dict[str, dict[str, Any]] = field(default_factory=dict)


def format_value(value: Any) -> str:
    """A sidecar value as the report shows it: text as is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(', ', ': '))


def sidecar_field(sidecar: Mapping[str, Any], name: str) -> Any:
    """``sidecar[A][B]`` for ``'A.B'``; None when any part is missing."""
    value: Any = sidecar
    for part in name.split('.'):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def brain_volume_ml(mask_file: Path) -> float:
    """Voxels inside a mask times the voxel volume, in millilitres (cm^3)."""
    mask = nb.Nifti1Image.from_filename(mask_file)
    voxel_mm3 = float(np.prod(mask.header.get_zooms()[:3]))
    return round(int(np.count_nonzero(np.asanyarray(mask.dataobj))) * voxel_mm3 / 1000, 1)


#: Key figures computed from a file rather than read from its sidecar: (name, function).
COMPUTED: dict[str, tuple[str, Callable[[Path], Any]]] = {
    'mask': ('BrainVolumeML', brain_volume_ml),
}


def collect_subject_outputs(output_dir: Path, subject: str) -> list[PipelineOutputs]:
    """Every derivative of ``sub-<subject>`` by pipeline, in :data:`SECTION_TITLES` order;
    pipelines that left nothing are left out. Paths are relative to ``output_dir``."""
    sections = {name: PipelineOutputs(name, title) for name, title in SECTION_TITLES.items()}
    subject_dir = output_dir / f'sub-{subject}'
    for path in sorted(subject_dir.rglob('*')):
        if not path.is_file() or path.name.startswith('.') or 'log' in path.parts[-3:-1]:
            continue
        entities = parse_file_entities(str(path))
        pipeline = _claims(entities)
        if pipeline is None or path.suffix == '.json':
            continue
        relative = path.relative_to(output_dir).as_posix()
        section = sections[pipeline]
        if path.parent.name == 'figures':
            section.figures.append(relative)
            continue
        section.files.append(relative)
        _add_key_figures(section, path, relative, entities)
    return [section for section in sections.values() if section.figures or section.files]


def _add_key_figures(
    section: PipelineOutputs, path: Path, relative: str, entities: Mapping[str, Any]
) -> None:
    """The pipeline's key fields of the file's sidecar, and what is computed from the file.

    A DRR view's PNG shares its NIfTI's sidecar: only the NIfTI's figures are listed.
    """
    if path.suffix == '.png':
        return
    sidecar_file = path.with_name(path.name.split('.')[0] + '.json')
    sidecar = json.loads(sidecar_file.read_text()) if sidecar_file.is_file() else {}
    if sidecar:
        section.sidecars[relative] = sidecar
    for name in KEY_FIELDS[section.pipeline]:
        value = sidecar_field(sidecar, name)
        if value is not None:
            section.key_figures.append(KeyFigure(relative, name, format_value(value)))
    computed = COMPUTED.get(entities.get('suffix', ''))
    if computed and 'space' not in entities:
        name, function = computed
        section.key_figures.append(KeyFigure(relative, name, format_value(function(path))))
