"""Reading report pages without a browser: links, images, sections and tagged cells."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


@dataclass
class Page:
    """What a test needs of an HTML page."""

    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    stylesheets: list[str] = field(default_factory=list)
    #: (data-file, data-field) -> the cell's text
    cells: dict[tuple[str, str], str] = field(default_factory=dict)
    #: the text of every <table> by its id, row by row
    tables: dict[str, list[list[str]]] = field(default_factory=dict)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._cell: tuple[str, str] | None = None
        self._text: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or '' for name, value in attrs}
        if 'id' in values:
            self.page.ids.add(values['id'])
        if tag == 'a' and 'href' in values:
            self.page.links.append(values['href'])
        elif tag == 'img':
            self.page.images.append(values.get('src', ''))
        elif tag == 'script' and 'src' in values:
            self.page.scripts.append(values['src'])
        elif tag == 'link' and values.get('rel') == 'stylesheet':
            self.page.stylesheets.append(values.get('href', ''))
        elif tag == 'table':
            self._table = values.get('id', f'table-{len(self.page.tables)}')
            self.page.tables[self._table] = []
        elif tag == 'tr' and self._table is not None:
            self._row = []
        elif tag in ('td', 'th'):
            self._in_td, self._text = True, []
            if 'data-field' in values:
                self._cell = (values['data-file'], values['data-field'])

    def handle_endtag(self, tag: str) -> None:
        if tag in ('td', 'th'):
            text = ''.join(self._text).strip()
            if self._cell is not None:
                self.page.cells[self._cell] = text
                self._cell = None
            if self._row is not None:
                self._row.append(text)
            self._in_td = False
        elif tag == 'tr' and self._row is not None and self._table is not None:
            self.page.tables[self._table].append(self._row)
            self._row = None
        elif tag == 'table':
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._in_td:
            self._text.append(data)


def read_page(path: Path) -> Page:
    reader = _Reader()
    reader.feed(path.read_text())
    return reader.page
