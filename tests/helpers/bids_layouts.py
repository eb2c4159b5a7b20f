"""Small BIDS datasets in the layouts that a file-name check got wrong: a CTF MEG recording
(a ``.ds`` folder) beside a T1w, OME-Zarr microscopy (a ``.ome.zarr`` folder), an atlas
(``tpl-``/``atlas-`` files), a derivative dataset, and an EEG study with a head-shape file.

Written from scratch after the layouts of bids-examples (file names only; contents are
minimal and our own). Images are empty placeholders, as in bids-examples.
"""

from __future__ import annotations

import json
from pathlib import Path

_T1W = {'sub-01/anat/sub-01_T1w.nii.gz': ''}
_MEG_SIDECAR = {
    'TaskName': 'auditory',
    'SamplingFrequency': 600,
    'PowerLineFrequency': 60,
    'DewarPosition': 'upright',
    'SoftwareFilters': 'n/a',
    'DigitizedLandmarks': False,
    'DigitizedHeadPoints': False,
}
_EEG_SIDECAR = {
    'TaskName': 'faces',
    'SamplingFrequency': 256,
    'PowerLineFrequency': 50,
    'SoftwareFilters': 'n/a',
    'EEGReference': 'Cz',
}

#: name: (dataset_description extras, {path: text, or a dict written as JSON}).
LAYOUTS: dict[str, tuple[dict, dict[str, str | dict]]] = {
    'ctf_meg_with_t1w': (
        {},
        {
            **_T1W,
            'sub-01/meg/sub-01_task-auditory_meg.json': _MEG_SIDECAR,
            'sub-01/meg/sub-01_task-auditory_meg.ds/sub-01_task-auditory_meg.meg4': '',
            'sub-01/meg/sub-01_task-auditory_meg.ds/sub-01_task-auditory_meg.res4': '',
            'sub-01/meg/sub-01_task-auditory_meg.ds/BadChannels': '',
            'sub-01/meg/sub-01_task-auditory_meg.ds/ClassFile.cls': '',
        },
    ),
    'ome_zarr_microscopy': (
        {},
        {
            'sub-01/micr/sub-01_sample-A_SPIM.json': {
                'PixelSize': [1, 1, 1],
                'PixelSizeUnits': 'um',
            },
            'sub-01/micr/sub-01_sample-A_SPIM.ome.zarr/.zgroup': {'zarr_format': 2},
            'sub-01/micr/sub-01_sample-A_SPIM.ome.zarr/.zattrs': {'multiscales': []},
            'samples.tsv': 'sample_id\tparticipant_id\tsample_type\nsample-A\tsub-01\ttissue\n',
        },
    ),
    'atlas': (
        {'DatasetType': 'derivative', 'GeneratedBy': [{'Name': 'hand'}]},
        {
            'atlas-Lobes_description.json': {'Name': 'Lobes'},
            'tpl-MNI152NLin2009cAsym/anat/tpl-MNI152NLin2009cAsym_atlas-Lobes_dseg.nii.gz': '',
            'tpl-MNI152NLin2009cAsym/anat/tpl-MNI152NLin2009cAsym_atlas-Lobes_dseg.tsv': (
                'index\tname\n1\tfrontal\n'
            ),
        },
    ),
    'fmriprep_like_derivative': (
        {'DatasetType': 'derivative', 'GeneratedBy': [{'Name': 'fMRIPrep'}]},
        {
            'desc-aseg_dseg.tsv': 'index\tname\n1\tcortex\n',
            'sub-01/anat/sub-01_desc-preproc_T1w.nii.gz': '',
            'sub-01/anat/sub-01_desc-aseg_dseg.nii.gz': '',
            'sub-01/anat/sub-01_space-MNI152NLin2009cAsym_res-2_label-CSF_probseg.nii.gz': '',
            'sub-01/log/20200101-000000_run/fmriprep.toml': '',
        },
    ),
    'eeg_with_headshape': (
        {'HEDVersion': '8.2.0'},
        {
            **_T1W,
            'sub-01/eeg/sub-01_task-faces_eeg.json': _EEG_SIDECAR,
            'sub-01/eeg/sub-01_task-faces_eeg.set': '',
            'sub-01/sub-01_headshape.pos': '',
        },
    ),
}


def write_layout(root: Path, name: str) -> Path:
    """Write the dataset ``name`` of :data:`LAYOUTS` under ``root``; return its folder."""
    description, files = LAYOUTS[name]
    folder = root / name
    files = {
        'dataset_description.json': {'Name': name, 'BIDSVersion': '1.10.0', **description},
        'README': f'{name}: a layout that a BIDS App must accept.\n',
        **files,
    }
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(content) if isinstance(content, dict) else content
        path.write_text(text)
    return folder
