"""``--help`` is the option reference: each default stated once, none that means 'unset', and
the options grouped by what they belong to (the pipelines each under its own title)."""

from __future__ import annotations

import re

import pytest

from mrctprep.cli.main import SUBCOMMANDS, run
from mrctprep.workflows.pipelines import PIPELINES

SECTIONS = (
    'positional arguments',
    'options',
    'BIDS input',
    'Workflow',
    'Resources',
    'MR preprocessing (mr-preproc)',
    'DRR (drr)',
    'Super-resolution (superres)',
    'Models (mr-harmonize; training at the group level)',
    'Sim2real CycleGAN training',
    'Organ segmentation training (organ-seg)',
    'CTFlow training',
    'CT harmonization (ct-harmonize)',
)


def _help(argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setenv('COLUMNS', '100')
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _sections(text: str) -> dict[str, list[str]]:
    """Each ``Title:`` block of the help and its option entries (an entry's lines joined)."""
    blocks = re.split(r'\n\n(?=\S[^\n]*:\n)', text.split('\n\n', 2)[2])
    sections = {}
    for block in blocks:
        title, _, body = block.partition(':\n')
        entries = re.split(r'\n(?=  \S)', body)
        sections[title] = [' '.join(entry.split()) for entry in entries if entry.strip()]
    return sections


@pytest.mark.parametrize('command', sorted(SUBCOMMANDS))
def test_every_default_is_stated_once_and_none_is_unset(command, capsys, monkeypatch):
    text = _help([command, '--help'], capsys, monkeypatch)
    for entries in _sections(text).values():
        for entry in entries:
            assert entry.count('default') <= 1, entry
            assert not re.search(r'\(default: (None|False|True|\[\])\)', entry), entry
            if entry.startswith(('-v, --verbose', '-q, --quiet')):
                assert 'default' not in entry, entry  # a counter, not a setting


def test_the_run_options_are_grouped_by_pipeline(capsys, monkeypatch):
    text = _help(['--help'], capsys, monkeypatch)
    sections = _sections(text)
    assert tuple(sections) == SECTIONS
    first_option = {
        entry.split()[0].rstrip(','): title
        for title, entries in sections.items()
        for entry in entries
    }
    for title, prefix in [('DRR (drr)', '--drr-'), ('Super-resolution (superres)', '--superres-')]:
        grouped = {option for option, where in first_option.items() if option.startswith(prefix)}
        assert grouped and all(first_option[option] == title for option in grouped)
    pipeline_titles = [title for title in SECTIONS if '(' in title]
    for title in pipeline_titles:
        named = re.findall(r'\(([a-z-]+)', title)[0]
        assert named in PIPELINES, title
    workflow = ' '.join(sections['Workflow'])
    assert '(default: mr-preproc ct-ingest)' in workflow and '(default: work)' in workflow
    superres = ' '.join(sections['Super-resolution (superres)'])
    assert '(default: 1.0)' in superres and '(default 1.0)' not in superres
