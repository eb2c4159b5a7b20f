"""The BIDS validator (bids-validator-deno, offline): valid layouts pass, CT is accepted,
.bidsignore is read as gitignore, and errors are one line each, naming the file."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from conftest import SHARED_DATA, run_cli, write_bids
from helpers.bids_layouts import LAYOUTS, write_layout
from mrctprep.core.bids import validate_bids_dir
from mrctprep.core.errors import BidsValidationError

T1W = SHARED_DATA / 'mr' / 't1_head_2mm.nii.gz'
CT = SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz'


@pytest.fixture
def t1w_and_ct(tmp_path):
    """A T1w and a CT (``_ct``, not in the BIDS schema) with sidecars, no .bidsignore."""
    bids = write_bids(
        tmp_path / 'bids',
        {'sub-01/anat/sub-01_T1w.nii.gz': T1W, 'sub-02/anat/sub-02_ct.nii.gz': CT},
        participants=['01', '02'],
    )
    (bids / 'sub-02/anat/sub-02_ct.json').write_text(json.dumps({'Modality': 'CT'}))
    return bids


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_valid_layouts_that_a_name_check_refused_are_accepted(tmp_path, layout):
    warnings = validate_bids_dir(write_layout(tmp_path, layout))
    # The placeholders are empty: the validator saw them, and their emptiness only warns.
    assert 'EMPTY_FILE' in {issue.code for issue in warnings}


def test_a_derivative_dataset_passes_with_the_validators_errors_as_warnings(tmp_path):
    warnings = validate_bids_dir(write_layout(tmp_path, 'fmriprep_like_derivative'))
    required = [issue for issue in warnings if issue.code == 'SIDECAR_KEY_REQUIRED']
    assert {issue.location for issue in required} >= {'sub-01/anat/sub-01_desc-preproc_T1w.nii.gz'}


def test_ct_is_accepted_without_bidsignore_but_a_broken_ct_sidecar_is_not(t1w_and_ct):
    warnings = validate_bids_dir(t1w_and_ct)
    assert not [issue for issue in warnings if 'sub-02_ct' in (issue.location or '')]
    (t1w_and_ct / 'sub-02/anat/sub-02_ct.json').write_text('{"Modality": ')
    with pytest.raises(BidsValidationError) as refused:
        validate_bids_dir(t1w_and_ct)
    assert any('sub-02/anat/sub-02_ct.json' in line for line in refused.value.errors)


def test_bidsignore_is_read_with_gitignore_semantics(t1w_and_ct, caplog):
    """``extras/`` ignores a folder at any depth (the validator alone reports it)."""
    extras = t1w_and_ct / 'sub-01/anat/extras'
    extras.mkdir()
    shutil.copyfile(T1W, extras / 'scout.nii.gz')
    with pytest.raises(BidsValidationError) as refused:
        validate_bids_dir(t1w_and_ct)
    assert refused.value.codes == {'NOT_INCLUDED': 2}  # the folder and the file in it
    assert all(
        line.startswith('NOT_INCLUDED sub-01/anat/extras/') for line in refused.value.errors
    )
    (t1w_and_ct / '.bidsignore').write_text('extras/\n')
    with caplog.at_level(logging.INFO, logger='mrctprep.core.bids'):
        validate_bids_dir(t1w_and_ct)
    assert f'{t1w_and_ct} is valid' in caplog.text


def test_errors_are_one_line_each_naming_the_file_unless_skipped(t1w_and_ct, tmp_path):
    shutil.copyfile(T1W, t1w_and_ct / 'sub-01/anat/T1_copy.nii.gz')
    shutil.copyfile(T1W, t1w_and_ct / 'sub-01/anat/sub-01_T1.nii.gz')
    args = (t1w_and_ct, tmp_path / 'out', 'participant', '-w', tmp_path / 'w', '--dry-run')
    refused = run_cli(*args)
    assert refused.returncode == 2 and 'Traceback' not in refused.stderr
    lines = refused.stderr.splitlines()
    for name in ('T1_copy.nii.gz', 'sub-01_T1.nii.gz'):
        [line] = [line for line in lines if f'NOT_INCLUDED sub-01/anat/{name}: ' in line]
        assert 'ERROR' in line
    assert lines[-1] == (
        f'mrctprep: error: the BIDS validator found 2 error(s) in {t1w_and_ct} '
        '(NOT_INCLUDED: 2), each listed above with its file; fix those files, list files that '
        'are not BIDS in .bidsignore, or pass --skip-bids-validation'
    )
    assert any('BIDS validator warning' in line for line in lines)  # warnings are logged
    assert run_cli(*args, '--skip-bids-validation').returncode == 0
