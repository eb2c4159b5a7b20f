"""What a run used, cited: ``logs/CITATION.md`` (methods text and references) and ``.bib``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mrctprep import __version__
from mrctprep.core.config import RunConfig
from mrctprep.core.derivatives import write_text_atomically


@dataclass(frozen=True)
class Reference:
    """One work to cite: its BibTeX key and type, fields, and the line of the reference list."""

    key: str
    kind: str
    fields: dict[str, str]

    def text(self) -> str:
        """``Authors (year). Title. Venue. doi:...`` for the Markdown reference list."""
        venue = self.fields.get('journal') or self.fields.get('booktitle') or ''
        parts = [f'{self.fields["author"]} ({self.fields["year"]}). {self.fields["title"]}.']
        if venue:
            parts.append(f'*{venue}*.')
        if 'doi' in self.fields:
            parts.append(f'doi:{self.fields["doi"]}')
        elif 'url' in self.fields:
            parts.append(self.fields['url'])
        return ' '.join(parts)

    def bibtex(self) -> str:
        body = ',\n'.join(f'  {name} = {{{value}}}' for name, value in self.fields.items())
        return f'@{self.kind}{{{self.key},\n{body}\n}}\n'


def _article(key: str, author: str, year: str, title: str, journal: str, doi: str) -> Reference:
    fields = {'author': author, 'year': year, 'title': title, 'journal': journal, 'doi': doi}
    return Reference(key, 'article', fields)


REFERENCES = {
    reference.key: reference
    for reference in (
        Reference(
            'mrctprep',
            'software',
            {
                'author': 'mrctprep developers',
                'year': '2026',
                'title': f'mrctprep: a BIDS App for MR and CT images, version {__version__}',
                'url': 'https://github.com/mrctprep/mrctprep',
            },
        ),
        _article(
            'nipype',
            'Gorgolewski, K. and Burns, C. D. and Madison, C. and others',
            '2011',
            'Nipype: a flexible, lightweight and extensible neuroimaging data processing '
            'framework in Python',
            'Frontiers in Neuroinformatics',
            '10.3389/fninf.2011.00013',
        ),
        _article(
            'pybids',
            'Yarkoni, T. and Markiewicz, C. J. and de la Vega, A. and others',
            '2019',
            'PyBIDS: Python tools for BIDS datasets',
            'Journal of Open Source Software',
            '10.21105/joss.01294',
        ),
        Reference(
            'nibabel',
            'software',
            {
                'author': 'Brett, M. and Markiewicz, C. J. and Hanke, M. and others',
                'year': '2024',
                'title': 'NiBabel: access a cacophony of neuro-imaging file formats',
                'doi': '10.5281/zenodo.591597',
            },
        ),
        _article(
            'simpleitk',
            'Lowekamp, B. C. and Chen, D. T. and Ibanez, L. and Blezek, D.',
            '2013',
            'The design of SimpleITK',
            'Frontiers in Neuroinformatics',
            '10.3389/fninf.2013.00045',
        ),
        _article(
            'n4',
            'Tustison, N. J. and Avants, B. B. and Cook, P. A. and others',
            '2010',
            'N4ITK: improved N3 bias correction',
            'IEEE Transactions on Medical Imaging',
            '10.1109/TMI.2010.2046908',
        ),
        _article(
            'ants',
            'Avants, B. B. and Tustison, N. J. and Song, G. and others',
            '2011',
            'A reproducible evaluation of ANTs similarity metric performance in brain image '
            'registration',
            'NeuroImage',
            '10.1016/j.neuroimage.2010.09.025',
        ),
        _article(
            'hdbet',
            'Isensee, F. and Schell, M. and Pflueger, I. and others',
            '2019',
            'Automated brain extraction of multisequence MRI using artificial neural networks',
            'Human Brain Mapping',
            '10.1002/hbm.24750',
        ),
        _article(
            'deepbet',
            'Fisch, L. and Zumdick, S. and Barkhau, C. and others',
            '2024',
            'deepbet: fast brain extraction of T1-weighted MRI using convolutional neural '
            'networks',
            'Computers in Biology and Medicine',
            '10.1016/j.compbiomed.2024.108845',
        ),
        _article(
            'mni152nlin2009',
            'Fonov, V. and Evans, A. C. and Botteron, K. and others',
            '2011',
            'Unbiased average age-appropriate atlases for pediatric studies',
            'NeuroImage',
            '10.1016/j.neuroimage.2010.07.033',
        ),
        _article(
            'nilearn',
            'Abraham, A. and Pedregosa, F. and Eickenberg, M. and others',
            '2014',
            'Machine learning for neuroimaging with scikit-learn',
            'Frontiers in Neuroinformatics',
            '10.3389/fninf.2014.00014',
        ),
        _article(
            'iguane',
            'Roca, V. and Kuchcinski, G. and Pruvo, J.-P. and Manouvriez, D. and Lopes, R.',
            '2025',
            'IGUANe: a 3D generalizable CycleGAN for multicenter harmonization of brain MR images',
            'Medical Image Analysis',
            '10.1016/j.media.2024.103388',
        ),
        Reference(
            'pytorch',
            'inproceedings',
            {
                'author': 'Paszke, A. and Gross, S. and Massa, F. and others',
                'year': '2019',
                'title': 'PyTorch: an imperative style, high-performance deep learning library',
                'booktitle': 'Advances in Neural Information Processing Systems 32',
                'url': 'https://arxiv.org/abs/1912.01703',
            },
        ),
        Reference(
            'unires',
            'inproceedings',
            {
                'author': 'Brudfors, M. and Balbastre, Y. and Nachev, P. and Ashburner, J.',
                'year': '2018',
                'title': 'MRI super-resolution using multi-channel total variation',
                'booktitle': 'Medical Image Understanding and Analysis (MIUA)',
                'doi': '10.1007/978-3-319-95921-4_21',
            },
        ),
        Reference(
            'deepdrr',
            'inproceedings',
            {
                'author': 'Unberath, M. and Zaech, J.-N. and Lee, S. C. and others',
                'year': '2018',
                'title': 'DeepDRR: a catalyst for machine learning in fluoroscopy-guided '
                'procedures',
                'booktitle': 'Medical Image Computing and Computer Assisted Intervention (MICCAI)',
                'doi': '10.1007/978-3-030-00937-3_12',
            },
        ),
        Reference(
            'efficientscn',
            'misc',
            {
                'author': 'Thaler, F. and Payer, C. and Bischof, H. and Stern, D.',
                'year': '2021',
                'title': 'Efficient multi-organ segmentation using SpatialConfiguration-Net '
                'with low GPU memory requirements',
                'url': 'https://arxiv.org/abs/2111.13630',
            },
        ),
        Reference(
            'ctflow',
            'inproceedings',
            {
                'author': 'Wei, L. and Yadav, A. and Hsu, W.',
                'year': '2023',
                'title': 'CTFlow: mitigating effects of computed tomography acquisition and '
                'reconstruction with normalizing flows',
                'booktitle': 'Medical Image Computing and Computer Assisted Intervention (MICCAI)',
                'url': 'https://github.com/hsu-lab/ctflow',
            },
        ),
        _article(
            'matplotlib',
            'Hunter, J. D.',
            '2007',
            'Matplotlib: a 2D graphics environment',
            'Computing in Science & Engineering',
            '10.1109/MCSE.2007.55',
        ),
    )
}

#: What each pipeline uses beyond the framework (``mrctprep``, Nipype, PyBIDS, NiBabel).
PIPELINE_REFERENCES = {
    'reorient': (),
    'ct-ingest': (),
    'mr-preproc': ('iguane', 'n4', 'simpleitk', 'ants'),
    'mr-harmonize': ('iguane', 'n4', 'simpleitk', 'ants', 'pytorch'),
    'superres': ('unires', 'simpleitk'),
    'drr': ('deepdrr',),
    'organ-seg': ('efficientscn', 'pytorch'),
    'ct-harmonize': ('ctflow', 'pytorch'),
}
_FRAMEWORK = ('mrctprep', 'nipype', 'pybids', 'nibabel', 'matplotlib')
_SKULL_STRIP_REFERENCES = {'hdbet': 'hdbet', 'hdbet-accurate': 'hdbet', 'deepbet': 'deepbet'}


def references_used(pipelines: Iterable[str], config: RunConfig) -> list[Reference]:
    """The works a run with these pipelines and settings used, each once, in first-use order."""
    keys = list(_FRAMEWORK)
    for pipeline in pipelines:
        keys.extend(PIPELINE_REFERENCES[pipeline])
        if pipeline in ('mr-preproc', 'mr-harmonize'):
            keys.extend(_mr_references(config))
    return [REFERENCES[key] for key in dict.fromkeys(keys)]


def _mr_references(config: RunConfig) -> list[str]:
    """The skull stripper and, unless the user named their own, the template (via nilearn)."""
    keys = []
    if config.mr.skull_strip in _SKULL_STRIP_REFERENCES:
        keys.append(_SKULL_STRIP_REFERENCES[config.mr.skull_strip])
    if config.mr.template is None:
        keys.extend(('mni152nlin2009', 'nilearn'))
    return keys


def write_citation(
    output_dir: Path, methods_text: str, references: Sequence[Reference]
) -> tuple[Path, Path]:
    """``logs/CITATION.md`` (the methods text, then the numbered references) and
    ``logs/CITATION.bib`` (the same references as BibTeX)."""
    # Each workflow's text is one line: a blank line between them makes them paragraphs.
    paragraphs = '\n\n'.join(line for line in methods_text.splitlines() if line.strip())
    listing = '\n'.join(
        f'{n}. [{ref.key}] {ref.text()}' for n, ref in enumerate(references, start=1)
    )
    markdown = (
        '# Methods\n\nResults included in this manuscript come from preprocessing performed '
        f'using *mrctprep* {__version__} [mrctprep], a BIDS App built on Nipype [nipype] with '
        'PyBIDS [pybids] and NiBabel [nibabel]; its QC figures were drawn with Matplotlib '
        f'[matplotlib].\n\n{paragraphs}\n\n## References\n\n{listing}\n'
    )
    bib = '\n'.join(reference.bibtex() for reference in references)
    logs = output_dir / 'logs'
    return (
        write_text_atomically(logs / 'CITATION.md', markdown),
        write_text_atomically(logs / 'CITATION.bib', bib),
    )
