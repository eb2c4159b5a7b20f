"""The group level: tables over every subject's participant-level outputs (MRIQC style)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from pathlib import Path

import nibabel as nb
from bids.layout import parse_file_entities

from mrctprep.core.config import InputOptions
from mrctprep.core.derivatives import write_text_atomically
from mrctprep.core.errors import InputError

LOGGER = logging.getLogger(__name__)

GROUP_COLUMNS = (
    'participant_id',
    'session_id',
    'desc',
    'source',
    'original_orientation',
    'original_shape',
    'voxel_size_mm',
)


def write_group_tables(inputs: InputOptions) -> list[Path]:
    """``group_<suffix>.tsv``: one row per native-space image the participant level wrote.

    Those are the outputs whose sidecar records the grid of the raw image
    (``OriginalOrientation``): ``desc-reorient``, ``desc-preproc`` T1w and CT.
    """
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    for sidecar in sorted(inputs.output_dir.glob('sub-*/**/anat/*.json')):
        entities = parse_file_entities(str(sidecar))
        if inputs.participant_label and entities['subject'] not in inputs.participant_label:
            continue
        metadata = json.loads(sidecar.read_text())
        image_file = sidecar.with_name(sidecar.name.removesuffix('.json') + '.nii.gz')
        if 'OriginalOrientation' not in metadata or not image_file.is_file():
            continue
        image = nb.Nifti1Image.from_filename(image_file)
        rows[entities['suffix']].append(
            {
                'participant_id': f'sub-{entities["subject"]}',
                'session_id': f'ses-{entities["session"]}' if 'session' in entities else 'n/a',
                'desc': entities.get('desc', 'n/a'),
                'source': ' '.join(metadata['Sources']),
                'original_orientation': metadata['OriginalOrientation'],
                'original_shape': 'x'.join(map(str, metadata['OriginalShape'])),
                'voxel_size_mm': 'x'.join(f'{z:.3g}' for z in image.header.get_zooms()[:3]),
            }
        )
    if not rows:
        raise InputError(
            f'no participant-level outputs in {inputs.output_dir}: run the participant level first'
        )
    written = []
    for suffix, suffix_rows in sorted(rows.items()):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, GROUP_COLUMNS, delimiter='\t', lineterminator='\n')
        writer.writeheader()
        writer.writerows(suffix_rows)
        path = write_text_atomically(inputs.output_dir / f'group_{suffix}.tsv', buffer.getvalue())
        LOGGER.info('%s: %d image(s)', path, len(suffix_rows))
        written.append(path)
    return written
