"""``group_organs.tsv``: every subject's (and session's) organ volumes, HU and edge flags."""

from __future__ import annotations

import csv
from pathlib import Path

from bids.layout import parse_file_entities

from mrctprep.core.config import InputOptions
from mrctprep.core.derivatives import write_text_atomically

MEASURES = ('volume_ml', 'mean_hu', 'median_hu', 'touches_fov_edge')


def write_group_organs(inputs: InputOptions) -> Path | None:
    """One row per organ-seg table (``*_seg-organs_volumes.tsv``), one column per organ and
    measure (``liver_volume_ml``...); None when organ-seg has not run."""
    tables = sorted(inputs.output_dir.glob('sub-*/**/anat/*_seg-organs_volumes.tsv'))
    if not tables:
        return None
    rows, organs = [], []
    for table in tables:
        entities = parse_file_entities(str(table))
        row = {
            'participant_id': f'sub-{entities["subject"]}',
            'session_id': f'ses-{entities["session"]}' if 'session' in entities else 'n/a',
        }
        with table.open() as stream:
            for organ in csv.DictReader(stream, delimiter='\t'):
                organs.append(organ['organ'])
                row.update({f'{organ["organ"]}_{m}': organ[m] for m in MEASURES})
        rows.append(row)
    columns = ['participant_id', 'session_id']
    columns += [f'{organ}_{m}' for organ in dict.fromkeys(organs) for m in MEASURES]
    lines = ['\t'.join(columns)] + ['\t'.join(row.get(c, 'n/a') for c in columns) for row in rows]
    return write_text_atomically(inputs.output_dir / 'group_organs.tsv', '\n'.join(lines) + '\n')
