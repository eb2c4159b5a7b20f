"""``group_ct_harmonization.tsv``: mean HU and noise per tissue region, before and after
ct-harmonize, beside the reference reconstruction's, so that a study sees the kernel gap close."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
from bids.layout import parse_file_entities
from nibabel.filebasedimages import ImageFileError

from mrctprep.core.bids import REC_ENTITY, read_sidecar
from mrctprep.core.config import InputOptions
from mrctprep.core.derivatives import write_text_atomically
from mrctprep.imaging.ct_noise import RegionStatistics, region_statistics, tissue_regions

LOGGER = logging.getLogger(__name__)

COLUMNS = (
    'participant_id',
    'session_id',
    'rec',
    'reference_rec',
    'region',
    'voxels',
    'mean_hu_before',
    'mean_hu_after',
    'mean_hu_reference',
    'noise_sd_before',
    'noise_sd_after',
    'noise_sd_reference',
)
HARMONIZED_SUFFIX = '_desc-harmonized_ct.nii.gz'
CONFORMED_SUFFIX = '_desc-preproc_ct.nii.gz'


def write_group_ct_harmonization(inputs: InputOptions) -> Path | None:
    """One row per harmonized CT and tissue region (:mod:`mrctprep.imaging.ct_noise`):
    before = ct-ingest's conformed CT, after = ct-harmonize's, reference = ct-ingest's CT of
    the reference reconstruction (``rec-`` from the harmonized sidecar) of the same
    acquisition, whose HU also define the regions ('n/a' where there is none: the regions then
    come from the CT itself). None when ct-harmonize has not run."""
    harmonized = sorted(inputs.output_dir.glob(f'sub-*/**/anat/*{HARMONIZED_SUFFIX}'))
    harmonized = [
        path
        for path in harmonized
        if not inputs.participant_label
        or parse_file_entities(str(path))['subject'] in inputs.participant_label
    ]
    if not harmonized:
        return None
    rows = []
    for path in harmonized:
        try:
            rows += _rows(path)
        except (OSError, ImageFileError, json.JSONDecodeError) as exc:
            LOGGER.warning('%s: left out of group_ct_harmonization.tsv (%s)', path, exc)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, delimiter='\t', lineterminator='\n', restval='n/a')
    writer.writeheader()
    writer.writerows(rows)
    path = write_text_atomically(
        inputs.output_dir / 'group_ct_harmonization.tsv', buffer.getvalue()
    )
    LOGGER.info('%s: %d harmonized CT(s)', path, len(harmonized))
    return path


def _rows(harmonized: Path) -> list[dict[str, str]]:
    before = harmonized.with_name(harmonized.name.replace(HARMONIZED_SUFFIX, CONFORMED_SUFFIX))
    if not before.is_file():
        LOGGER.warning(
            '%s: no ct-ingest output %s beside it, left out of group_ct_harmonization.tsv; run '
            'the participant level with ct-ingest too',
            harmonized,
            before.name,
        )
        return []
    reference_rec = (read_sidecar(harmonized).get('ReferenceCondition') or '').removeprefix('rec-')
    volumes = {
        key: nb.Nifti1Image.from_filename(path)
        for key, path in (('before', before), ('after', harmonized))
    }
    reference = _reference_image(before, volumes['before'], reference_rec)
    if reference is not None:
        volumes['reference'] = reference
    pixel_mm = float(np.mean(volumes['before'].header.get_zooms()[:2]))
    hu = {key: np.asarray(image.dataobj, dtype=np.float32) for key, image in volumes.items()}
    regions = tissue_regions(hu.get('reference', hu['before']), pixel_mm)
    statistics = {key: region_statistics(volume, regions, pixel_mm) for key, volume in hu.items()}
    entities = parse_file_entities(str(harmonized))
    rows = []
    for region, counted in statistics['before'].items():
        row = {
            'participant_id': f'sub-{entities["subject"]}',
            'session_id': f'ses-{entities["session"]}' if 'session' in entities else 'n/a',
            'rec': entities.get('reconstruction', 'n/a'),
            'reference_rec': reference_rec or 'n/a',
            'region': region,
            'voxels': str(counted.voxels),
        }
        for key, per_region in statistics.items():
            row |= _measures(key, per_region[region])
        rows.append(row)
    return rows


def _reference_image(
    conformed: Path, image: nb.Nifti1Image, reference_rec: str
) -> nb.Nifti1Image | None:
    """ct-ingest's CT of the same acquisition in the reference reconstruction, if written
    on the grid of ``image`` (the CT at ``conformed``)."""
    if not reference_rec or not REC_ENTITY.search(conformed.name):
        return None
    candidate = conformed.with_name(REC_ENTITY.sub(f'_rec-{reference_rec}', conformed.name))
    if not candidate.is_file():
        return None
    reference = nb.Nifti1Image.from_filename(candidate)
    if reference.shape != image.shape or not np.allclose(reference.affine, image.affine):
        LOGGER.warning('%s: not on the grid of %s; regions from the latter', candidate, conformed)
        return None
    return reference


def _measures(key: str, statistics: RegionStatistics) -> dict[str, str]:
    return {
        f'mean_hu_{key}': _number(statistics.mean_hu),
        f'noise_sd_{key}': _number(statistics.noise_sd_hu),
    }


def _number(value: float) -> str:
    return 'n/a' if np.isnan(value) else f'{value:.2f}'
