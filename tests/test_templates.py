"""The MNI152 templates come from nilearn's public loaders, with the grids and values of the
files it ships (read here by path only to prove that nothing changed)."""

from __future__ import annotations

from importlib import resources

import nibabel as nib
import numpy as np
import pytest

from mrctprep.imaging.io import load_mni152_template, load_mni152_unit_map

_SHIPPED = 'mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz'


@pytest.mark.parametrize('kind', ['t1', 'gm', 'wm'])
def test_public_loaders_give_the_shipped_maps(kind):
    with resources.as_file(
        resources.files('nilearn') / 'datasets' / 'data' / _SHIPPED.format(kind)
    ) as path:
        shipped = nib.load(path)
        values = np.asarray(shipped.dataobj)
    assert values.dtype == np.uint8
    template = load_mni152_template(kind)
    unit, affine = load_mni152_unit_map(kind)
    assert template.shape == unit.shape == shipped.shape == (197, 233, 189)
    assert np.array_equal(template.affine, shipped.affine) and np.array_equal(
        affine, shipped.affine
    )
    assert np.array_equal(template.get_fdata(dtype=np.float32), values.astype(np.float32))
    assert np.array_equal(unit, values.astype(np.float32) / np.float32(255))


def test_callers_may_change_the_maps_they_get():
    """nilearn caches the images its loaders return; ours are copies."""
    unit, affine = load_mni152_unit_map('gm')
    expected = unit.copy()
    unit[...] = -1
    affine[...] = 0
    again, again_affine = load_mni152_unit_map('gm')
    assert np.array_equal(again, expected) and again_affine[3, 3] == 1
