"""Shared fixtures: the real images in ../shared/data and small BIDS datasets built from them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'


def pytest_configure(config):
    if not SHARED_DATA.is_dir():
        raise pytest.UsageError(f'the test images are expected in {SHARED_DATA} (../shared/data)')


def make_read_only(root: Path) -> None:
    """Remove write permission everywhere under ``root``, as a mounted input would be."""
    for path in [root, *root.rglob('*')]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob('*')]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def run_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the installed command line as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, '-m', 'mrctprep', *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, 'PYTHONHASHSEED': '0', **(env or {})},
        timeout=600,
    )


def write_bids(root: Path, files: dict[str, Path | bytes], participants: list[str]) -> Path:
    """A minimal BIDS dataset: ``files`` maps relative paths to a source file or raw bytes."""
    root.mkdir(parents=True)
    (root / 'dataset_description.json').write_text(
        json.dumps({'Name': 'test dataset', 'BIDSVersion': '1.10.0', 'License': 'CC0'})
    )
    (root / 'participants.tsv').write_text(
        'participant_id\n' + ''.join(f'sub-{p}\n' for p in participants)
    )
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
    return root


@pytest.fixture(scope='session')
def mini_bids(tmp_path_factory) -> Path:
    """Three subjects of real images: an oblique LPS T1w, a CT in HU, a T1w + thick-slab PDw."""
    root = tmp_path_factory.mktemp('mini') / 'bids'
    write_bids(
        root,
        {
            'sub-01/anat/sub-01_T1w.nii.gz': SHARED_DATA / 'mr' / 't1_head_2mm.nii.gz',
            'sub-01/anat/sub-01_PDw.nii.gz': SHARED_DATA / 'mr' / 'chris_pd.nii.gz',
            'sub-02/anat/sub-02_ct.nii.gz': SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz',
            'sub-03/ses-1/anat/sub-03_ses-1_T1w.nii.gz': SHARED_DATA
            / 'mr'
            / 'stroke_t1_brain.nii.gz',
            'sub-03/ses-2/anat/sub-03_ses-2_run-1_T1w.nii.gz': SHARED_DATA
            / 'mr'
            / 't1_head_2mm.nii.gz',
        },
        participants=['01', '02', '03'],
    )
    make_read_only(root)
    return root


@pytest.fixture(scope='session')
def demo_bids(tmp_path_factory) -> Path:
    """The dataset of ``mrctprep demo``, generated once per test session, read-only."""
    root = tmp_path_factory.mktemp('demo') / 'bids'
    result = run_cli('demo', root, '--seed', '0')
    assert result.returncode == 0, result.stderr
    make_read_only(root)
    return root


@pytest.fixture(scope='session')
def demo_run(demo_bids, tmp_path_factory):
    """The README's main job on the demo dataset: the participant level with the default
    pipelines, then the group level. Returns both results and the derivatives folder; the work
    folder beside it holds the cache that later runs on the demo may reuse."""
    root = tmp_path_factory.mktemp('demo_run')
    participant = run_cli(demo_bids, root / 'derivatives', 'participant', '-w', root / 'work')
    group = run_cli(demo_bids, root / 'derivatives', 'group', '-w', root / 'work')
    return participant, group, root / 'derivatives'
