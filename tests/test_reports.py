"""The reports' content, read without a browser: sections, links, and the sidecars' numbers.

The demo's pages come from the suite's one demo run (the ``demo_run`` fixture); the rest from
small outputs written here.
"""

from __future__ import annotations

import csv
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import nibabel as nb
import numpy as np
import pytest
import yaml

from conftest import SHARED_DATA, run_cli
from helpers.html import Page, read_page
from mrctprep.core.config import ExecutionOptions, InputOptions, RunConfig
from mrctprep.imaging.figures import body_region
from mrctprep.reports.citations import references_used, write_citation
from mrctprep.reports.collect import format_value, sidecar_field
from mrctprep.reports.group import write_group_report
from mrctprep.reports.records import RunRecord, SessionRecord, write_run_record
from mrctprep.reports.subject import write_subject_report

SUBJECTS = ('01', '02', '03', '04')
REPOSITORY = Path(__file__).resolve().parents[1]


def _assert_portable(page: Page, page_file: Path) -> None:
    """Every link and image resolves inside the folder; nothing is fetched from elsewhere."""
    assert not page.scripts and not page.stylesheets  # inlined
    for target in page.links + page.images:
        assert not re.match(r'(https?:)?//', target), target
        if target.startswith(('#', 'data:')):
            continue
        assert (page_file.parent / unquote(target)).is_file(), target
    text = page_file.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert '@import' not in text and 'url(http' not in text


def test_subject_reports_show_each_pipeline_with_the_sidecars_numbers(demo_run):
    participant, group, out = demo_run
    assert participant.returncode == 0, participant.stderr
    for subject in SUBJECTS:
        page_file = out / f'sub-{subject}.html'
        page = read_page(page_file)
        assert {'summary', 'mr-preproc', 'ct-ingest', 'errors', 'methods', 'configuration'} <= (
            page.ids
        )
        _assert_portable(page, page_file)
        figures = sorted(
            p.relative_to(out).as_posix() for p in out.glob(f'sub-{subject}/figures/*')
        )
        assert sorted(page.images) == figures
        # Every key figure is the sidecar's value; the brain volume is the mask's.
        assert len(page.cells) > 10
        for (file, name), shown in page.cells.items():
            if name == 'BrainVolumeML':
                mask = nb.load(out / file)
                volume = np.count_nonzero(mask.get_fdata()) * np.prod(mask.header.get_zooms())
                assert float(shown) == pytest.approx(volume / 1000, abs=0.05)
                continue
            sidecar = json.loads((out / (file.split('.')[0] + '.json')).read_text())
            assert shown == format_value(sidecar_field(sidecar, name)), (file, name)
        fields = {name for _, name in page.cells}
        assert {
            'BrainVolumeML',
            'RotationDegrees',
            'HounsfieldCheck',
            'SkullStripMethod',
        } <= fields
        text = page_file.read_text()
        assert 'No errors to report.' in text
        assert 'Isensee' in text and 'Tustison' in text  # the methods' references
        assert f'sub-{subject}/anat/sub-{subject}_T1w.nii.gz' in text  # inputs found
        record = RunRecord.from_json(
            json.loads(sorted(out.glob(f'sub-{subject}/log/*/run.json'))[-1].read_text())
        )
        assert record.sessions[0].pipelines == ['mr-preproc', 'ct-ingest']
        assert f'<span id="duration">{record.duration_s}</span>' in text


def test_group_report_links_every_subject_and_shows_the_group_tables(demo_run, demo_bids):
    _, group, out = demo_run
    assert group.returncode == 0, group.stderr
    page_file = out / 'group.html'
    page = read_page(page_file)
    _assert_portable(page, page_file)
    subjects = page.tables['subjects-table']
    assert [row[0] for row in subjects[1:]] == [f'sub-{s}' for s in SUBJECTS]
    assert all(f'sub-{s}.html' in page.links for s in SUBJECTS)
    with open(demo_bids / 'participants.tsv') as table:
        sites = {
            row['participant_id']: row['site'] for row in csv.DictReader(table, delimiter='\t')
        }
    assert {row[0]: row[2] for row in subjects[1:]} == sites
    # Each group TSV as a table with the same rows.
    shown = {name: rows for name, rows in page.tables.items() if name.startswith('table-')}
    for tsv in sorted(out.glob('group_*.tsv')):
        with tsv.open() as handle:
            rows = list(csv.reader(handle, delimiter='\t'))
        assert rows in shown.values(), tsv.name
    # One thumbnail per subject, rating rows per subject and pipeline, a per-site plot.
    assert sum(src.startswith('data:image/png;base64,') for src in page.images) == len(SUBJECTS)
    assert len(page.tables['rating-table']) == 1 + 2 * len(SUBJECTS)
    text = page_file.read_text()
    assert text.count('<svg') >= 1 and 'siteA' in text and 'siteB' in text


def test_reports_only_writes_the_reports_again_without_running_anything(
    demo_run, demo_bids, tmp_path
):
    _, _, out = demo_run
    report = out / 'sub-02.html'
    before = report.read_text()
    derivatives = {p: p.stat().st_mtime_ns for p in out.glob('sub-02/anat/*')}
    report.unlink()
    start = time.perf_counter()
    result = run_cli(
        demo_bids,
        out,
        'participant',
        '--reports-only',
        '--participant-label',
        '02',
        '-w',
        tmp_path / 'work',
    )
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - start < 60
    after = report.read_text()
    # The same page, but for the time it was written.
    strip = re.compile(r'report written [^.<]+')
    assert strip.sub('', after) == strip.sub('', before)
    assert {p: p.stat().st_mtime_ns for p in out.glob('sub-02/anat/*')} == derivatives
    assert not any((tmp_path / 'work').rglob('*.pklz'))  # no node ran
    # At the group level, the page alone: the tables stay as they were.
    tables = {p: p.stat().st_mtime_ns for p in out.glob('group_*.tsv')}
    (out / 'group.html').unlink()
    result = run_cli(demo_bids, out, 'group', '--reports-only', '-w', tmp_path / 'work')
    assert result.returncode == 0, result.stderr
    assert len(read_page(out / 'group.html').tables['subjects-table']) == 1 + len(SUBJECTS)
    assert {p: p.stat().st_mtime_ns for p in out.glob('group_*.tsv')} == tables


def test_citation_lists_what_the_run_used(demo_run):
    _, _, out = demo_run
    markdown = (out / 'logs' / 'CITATION.md').read_text()
    bib = (out / 'logs' / 'CITATION.bib').read_text()
    keys = re.findall(r'^@\w+\{([^,]+),', bib, re.MULTILINE)
    assert keys == re.findall(r'^\d+\. \[([^\]]+)\]', markdown, re.MULTILINE)
    for key in ('mrctprep', 'nipype', 'hdbet', 'n4', 'ants', 'iguane', 'mni152nlin2009'):
        assert key in keys
    assert 'deepdrr' not in keys and 'unires' not in keys  # not run
    assert 'Each T1w image was preprocessed following IGUANe' in markdown


def test_references_follow_the_pipelines_and_options(tmp_path):
    config = RunConfig(
        inputs=InputOptions(bids_dir=tmp_path, output_dir=tmp_path / 'out'),
        execution=ExecutionOptions(work_dir=tmp_path / 'work'),
    )
    keys = [ref.key for ref in references_used(['drr', 'superres'], config)]
    assert keys[-3:] == ['deepdrr', 'unires', 'simpleitk'] and 'hdbet' not in keys
    markdown, bib = write_citation(tmp_path, 'Text.\n', references_used(['reorient'], config))
    assert '10.3389/fninf.2011.00013' in markdown.read_text()  # nipype's DOI
    assert bib.read_text().count('@') == 5


def test_repository_citation_file_is_valid_cff():
    content = yaml.safe_load((REPOSITORY / 'CITATION.cff').read_text())
    assert content['cff-version'] == '1.2.0'
    assert content['title'] and content['authors'] and content['license'] == 'Apache-2.0'


def test_a_failed_node_shows_with_its_error_and_crash_file(tmp_path):
    out = tmp_path / 'out'
    log_dir = out / 'sub-07' / 'log' / '20260101-000000_run'
    log_dir.mkdir(parents=True)
    crash = log_dir / 'crash-20260101-000001-root-skull_strip-abc.txt'
    crash.write_text(
        'Node: mrctprep_0_1_wf.sub_07_wf.mr_preproc_wf.skull_strip\nTraceback...\n'
        'ValueError: brain mask is empty\n'
    )
    session = SessionRecord(
        'sub-07',
        {'t1w': ['sub-07/anat/sub-07_T1w.nii.gz']},
        ['mr-preproc'],
        {'ct-ingest': 'no input (needs any of: ct)'},
    )
    write_run_record(
        log_dir,
        '07',
        [session],
        command=['mrctprep', 'a', 'b', 'participant'],
        started=datetime(2026, 1, 1, tzinfo=UTC),
        finished=datetime(2026, 1, 1, 0, 2, tzinfo=UTC),
    )
    page_file = write_subject_report(out, '07')
    page = read_page(page_file)
    failures = page.tables['failures']
    assert failures[1][:2] == [
        'sub-07 mr_preproc_wf.skull_strip',
        'ValueError: brain mask is empty',
    ]
    _assert_portable(page, page_file)
    text = page_file.read_text()
    assert 'ct-ingest: no input (needs any of: ct)' in text and '120.0' in text


@pytest.mark.parametrize(
    ('image', 'body_part', 'region'),
    [
        ('ct/totalseg_pulmonary_ct_cropped.nii.gz', None, 'chest'),
        ('ct/totalseg_example_ct.nii.gz', None, 'body'),  # abdomen and pelvis
        ('ct/totalseg_example_ct_sm.nii.gz', 'HEAD', 'head'),  # the sidecar wins
        ('ct/totalseg_example_ct_sm.nii.gz', 'Chest', 'chest'),
    ],
)
def test_ct_figures_use_the_windows_of_the_body_part(image, body_part, region):
    img = nb.as_closest_canonical(nb.load(SHARED_DATA / image))
    assert body_region(img.get_fdata(), img.header.get_zooms(), body_part) == region


def test_demo_figures_are_the_mask_mosaic_the_flicker_and_head_windows(demo_run):
    _, _, out = demo_run
    figures = out / 'sub-01' / 'figures'
    mosaic = (figures / 'sub-01_desc-brainmask_T1w.svg').read_text()
    for plane in ('sagittal', 'coronal', 'axial'):
        assert len(re.findall(rf'>{plane} \d+<', mosaic)) == 6
    flicker = (figures / 'sub-01_space-MNI152NLin2009aSym_T1w.svg').read_text()
    assert '@keyframes mrctprep-flicker' in flicker
    for frame in ('template', 'subject'):
        assert len(re.findall(rf'<g id="flicker-{frame}-\d-\d"', flicker)) == 12
    ct = (figures / 'sub-01_desc-preproc_ct.svg').read_text()
    assert '(head)' in ct and 'brain 40/80' in ct and 'bone 400/1800' in ct
    assert 'lung' not in ct and 'soft-tissue' not in ct
    # A subject page stays light: its figures are referenced, not inlined.
    assert (out / 'sub-01.html').stat().st_size < 100_000


def test_group_rows_are_sessions_with_their_site_pipelines_and_thumbnail(tmp_path):
    bids, out = tmp_path / 'bids', tmp_path / 'out'
    bids.mkdir()
    (bids / 'participants.tsv').write_text('participant_id\tsite\nsub-03\tsiteC\n')
    sessions = []
    for session, orientation in (('1', 'LPS'), ('2', 'RAS')):
        stem = out / f'sub-03/ses-{session}/anat/sub-03_ses-{session}_desc-reorient_T1w'
        stem.parent.mkdir(parents=True)
        image = np.zeros((20, 24, 16), dtype=np.float32)
        image[5:15, 6:18, 4:12] = 100.0
        nb.Nifti1Image(image, np.eye(4)).to_filename(f'{stem}.nii.gz')
        sidecar = {'OriginalOrientation': orientation, 'OriginalShape': [20, 24, 16]}
        stem.with_suffix('.json').write_text(json.dumps(sidecar))
        inputs = {'t1w': [f'sub-03/ses-{session}/anat/sub-03_ses-{session}_T1w.nii.gz']}
        skipped = {'ct-ingest': 'no input (needs any of: ct)'}
        sessions.append(SessionRecord(f'sub-03_ses-{session}', inputs, ['reorient'], skipped))
    when = datetime(2026, 1, 1, tzinfo=UTC)
    log_dir = out / 'sub-03' / 'log' / '20260101-000000_run'
    write_run_record(log_dir, '03', sessions, command=['mrctprep'], started=when, finished=when)
    subject_page = read_page(write_subject_report(out, '03'))
    assert [row[0] for row in subject_page.tables['sessions'][1:]] == [
        'sub-03_ses-1',
        'sub-03_ses-2',
    ]
    assert (
        subject_page.cells[
            ('sub-03/ses-1/anat/sub-03_ses-1_desc-reorient_T1w.nii.gz', 'OriginalOrientation')
        ]
        == 'LPS'
    )
    page_file = write_group_report(InputOptions(bids_dir=bids, output_dir=out))
    page = read_page(page_file)
    assert page.tables['subjects-table'][1:] == [
        ['sub-03', 'ses-1', 'siteC', 'reorient', '0', 'sub-03.html'],
        ['sub-03', 'ses-2', 'siteC', 'reorient', '0', 'sub-03.html'],
    ]
    assert [row[:3] for row in page.tables['rating-table'][1:]] == [
        ['sub-03', 'ses-1', 'reorient'],
        ['sub-03', 'ses-2', 'reorient'],
    ]
    assert sum(src.startswith('data:image/png') for src in page.images) == 2
    _assert_portable(page, page_file)
