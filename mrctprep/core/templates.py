"""Template files that ship with installed packages: found on disk, never downloaded."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

#: The ``space-`` label of nilearn's bundled ICBM 2009a symmetric 1 mm T1, our default target.
TEMPLATE_NAME = 'MNI152NLin2009aSym'

#: nilearn's bundled MNI152 2009a maps (uint8): the brain-only T1, grey and white matter.
MNI152_FILES = {
    kind: f'mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz' for kind in ('t1', 'gm', 'wm')
}


def mni152_template_file(kind: str) -> Traversable:
    """Location of nilearn's bundled MNI152 2009a map: ``'t1'``, ``'gm'`` or ``'wm'``.

    >>> mni152_template_file('gm').name
    'mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz'
    """
    return resources.files('nilearn') / 'datasets' / 'data' / MNI152_FILES[kind]
