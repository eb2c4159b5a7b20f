"""The README and docs/: every relative link resolves (files and #anchors), and the README's
pipeline table lists exactly the pipelines that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mrctprep.workflows.pipelines import PIPELINES

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r'```.*?```', '', page.read_text(), flags=re.DOTALL)
    headings = re.findall(r'^#+\s+(.+?)\s*$', text, flags=re.MULTILINE)
    return {re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-') for heading in headings}


@pytest.mark.parametrize('page', PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = re.sub(r'```.*?```', '', page.read_text(), flags=re.DOTALL)
    links = [link for link in LINK.findall(text) if not re.match(r'[a-z]+:', link)]
    for link in links:
        path, _, anchor = link.partition('#')
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f'{page.name}: {link} does not exist'
        assert target.is_relative_to(ROOT), f'{page.name}: {link} leaves the repository'
        if anchor:
            assert anchor in _anchors(target), f'{page.name}: no heading #{anchor} in {path}'


def test_the_readme_links_every_docs_page():
    readme = (ROOT / 'README.md').read_text()
    linked = {(ROOT / link.partition('#')[0]).resolve() for link in LINK.findall(readme)}
    assert set((ROOT / 'docs').rglob('*.md')) <= linked


def test_the_readme_pipeline_table_lists_the_pipelines_that_exist():
    readme = (ROOT / 'README.md').read_text()
    rows = re.findall(r'^\| \[`([a-z-]+)`\]\(docs/pipelines/\1\.md\)', readme, re.MULTILINE)
    assert sorted(rows) == sorted(PIPELINES)
    assert sorted(p.stem for p in (ROOT / 'docs' / 'pipelines').glob('*.md')) == sorted(PIPELINES)
