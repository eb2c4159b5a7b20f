"""Derivative names, atomic writes and the dataset-level files."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import nibabel as nb
import numpy as np
import pytest

from conftest import SHARED_DATA
from mrctprep import __version__
from mrctprep.core.derivatives import (
    build_derivative_path,
    write_atomically,
    write_derivative_description,
)
from mrctprep.imaging.bias import FIELD_PRECISION, n4_bias_correct
from mrctprep.imaging.io import load_image
from mrctprep.interfaces.bids import DerivativesDataSink


@pytest.mark.parametrize(
    ('entities', 'suffix', 'extension', 'datatype', 'expected'),
    [
        (
            {
                'subject': '01',
                'session': 'A',
                'acquisition': 'mprage',
                'run': 1,
                'desc': 'preproc',
            },
            'T1w',
            '.nii.gz',
            'anat',
            'sub-01/ses-A/anat/sub-01_ses-A_acq-mprage_run-1_desc-preproc_T1w.nii.gz',
        ),
        (
            {'sub': '01', 'space': 'MNI152NLin2009aSym', 'res': '1', 'desc': 'brain'},
            'mask',
            '.nii.gz',
            'anat',
            'sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-1_desc-brain_mask.nii.gz',
        ),
        (
            {'sub': '01', 'from': 'T1w', 'to': 'MNI152NLin2009aSym', 'mode': 'image'},
            'xfm',
            '.h5',
            'anat',
            'sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5',
        ),
        (
            {'sub': '01', 'label': 'liver', 'seg': 'organs'},
            'probseg',
            '.nii.gz',
            'anat',
            'sub-01/anat/sub-01_seg-organs_label-liver_probseg.nii.gz',
        ),
        (
            {'sub': '01', 'ses': 'A', 'desc': 'reorient'},
            'T1w',
            '.svg',
            'figures',
            'sub-01/figures/sub-01_ses-A_desc-reorient_T1w.svg',
        ),
    ],
)
def test_names_follow_the_bids_entity_order(entities, suffix, extension, datatype, expected):
    path = build_derivative_path(entities, suffix=suffix, extension=extension, datatype=datatype)
    assert path == PurePosixPath(expected)


def test_unknown_entities_and_missing_subject_are_refused():
    with pytest.raises(ValueError, match='unknown BIDS entities: colour'):
        build_derivative_path({'sub': '01', 'colour': 'red'}, suffix='T1w', extension='.nii.gz')
    with pytest.raises(ValueError, match='needs the "sub" entity'):
        build_derivative_path({'desc': 'x'}, suffix='T1w', extension='.nii.gz')


def test_an_interrupted_write_leaves_neither_output_nor_temporary_file(tmp_path):
    target = tmp_path / 'sub-01' / 'anat' / 'sub-01_desc-x_T1w.nii.gz'
    target.parent.mkdir(parents=True)
    target.write_bytes(b'previous complete version')

    def dies_halfway(temporary):
        temporary.write_bytes(b'half')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, dies_halfway)
    assert target.read_bytes() == b'previous complete version'
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]

    seen = []
    write_atomically(target, lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b'new')))
    assert seen[0].startswith('.tmp-') and seen[0].endswith('.nii.gz')
    assert target.read_bytes() == b'new'


def test_dataset_description_names_generator_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv('MRCTPREP_CONTAINER_TYPE', 'docker')
    monkeypatch.delenv('MRCTPREP_CONTAINER_TAG', raising=False)  # as the images set it
    raw = {'Name': 'Travelling heads', 'License': 'CC0', 'DatasetDOI': 'doi:10.1/xyz'}
    path = write_derivative_description(tmp_path / 'raw', tmp_path / 'out', raw)
    description = json.loads(path.read_text())
    assert description['DatasetType'] == 'derivative'
    assert description['GeneratedBy'][0]['Name'] == 'mrctprep'
    assert description['GeneratedBy'][0]['Container'] == {
        'Type': 'docker',
        'Tag': f'mrctprep:{__version__}',
    }
    assert description['SourceDatasets'] == [
        {'URL': (tmp_path / 'raw').as_uri(), 'DOI': 'doi:10.1/xyz'}
    ]
    assert description['License'] == 'CC0'


def test_bias_field_is_stored_as_int16_within_a_tenth_of_n4s_tolerance(tmp_path):
    """A real N4 field (a 2 mm head T1w, fitted inside its bright voxels) through the sink:
    int16 at FIELD_PRECISION, under half its float32 size, every value within half a step (20
    times below N4's convergence threshold)."""
    head = load_image(SHARED_DATA / 'mr' / 't1_head_2mm.nii.gz')
    data = head.get_fdata()
    mask = nb.Nifti1Image((data > 0.2 * data.max()).astype(np.uint8), head.affine)
    correction = n4_bias_correct(head, mask, threads=2)
    field_file = tmp_path / 'bias_field.nii'
    correction.field.to_filename(field_file)
    stored = {}
    for name, precision in (('float32', {}), ('int16', {'precision': FIELD_PRECISION})):
        sink = DerivativesDataSink(
            base_directory=str(tmp_path / name),
            source_file=[str(tmp_path / 'sub-01' / 'anat' / 'sub-01_T1w.nii.gz')],
            in_file=str(field_file),
            entities={'desc': 'biasfield'},
            **precision,
        )
        stored[name] = Path(sink.run().outputs.out_file)
    quantised = nb.load(stored['int16'])
    assert quantised.get_data_dtype() == np.int16
    assert quantised.dataobj.slope == pytest.approx(FIELD_PRECISION)
    field = correction.field.get_fdata()
    assert np.abs(quantised.get_fdata() - field).max() <= quantised.dataobj.slope / 2 + 1e-7
    assert FIELD_PRECISION * 10 <= correction.parameters['ConvergenceThreshold']
    assert stored['int16'].stat().st_size * 2 < stored['float32'].stat().st_size


def test_an_image_with_nan_keeps_its_float_type_when_a_precision_is_asked(tmp_path):
    values = np.array([[[0.5, np.nan], [1.0, 2.0]]], dtype=np.float32)
    nb.Nifti1Image(values, np.eye(4)).to_filename(tmp_path / 'map.nii')
    sink = DerivativesDataSink(
        base_directory=str(tmp_path / 'out'),
        source_file=[str(tmp_path / 'sub-01' / 'anat' / 'sub-01_T1w.nii.gz')],
        in_file=str(tmp_path / 'map.nii'),
        entities={'desc': 'biasfield'},
        precision=FIELD_PRECISION,
    )
    stored = nb.load(sink.run().outputs.out_file)
    assert stored.get_data_dtype() == np.float32
    np.testing.assert_array_equal(stored.get_fdata(), values)
