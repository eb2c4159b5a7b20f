"""HTML from the package's Jinja2 templates: pages that need no server and no network."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from mrctprep.core.derivatives import write_text_atomically

_ENVIRONMENT = Environment(
    loader=PackageLoader('mrctprep.reports', 'templates'),
    autoescape=select_autoescape(['html']),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def write_page(path: Path, template: str, **context: Any) -> Path:
    """Render ``templates/<template>`` with ``context`` into ``path``, atomically."""
    return write_text_atomically(path, _ENVIRONMENT.get_template(template).render(**context))


def markdown_blocks(text: str) -> list[tuple[str, str]]:
    """The little Markdown of ``CITATION.md`` as (kind, text) blocks: ``heading``,
    ``paragraph`` and ``item`` (a numbered reference), so that templates escape the text."""
    blocks = []
    for chunk in re.split(r'\n\s*\n', text.strip()):
        for line in chunk.splitlines() if re.match(r'\d+\. ', chunk) else [chunk]:
            if line.startswith('#'):
                blocks.append(('heading', line.lstrip('# ')))
            elif re.match(r'\d+\. ', line):
                blocks.append(('item', line.split('. ', 1)[1].replace('*', '')))
            else:
                blocks.append(('paragraph', ' '.join(line.split()).replace('*', '')))
    return blocks
