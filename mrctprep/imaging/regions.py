"""Coarse brain regions in MNI space and regional mean intensities: the features of ComBat.

The regions come from the ICBM 2009a symmetric tissue maps that nilearn ships (no download),
the template mr-preproc registers to. A voxel of the template's brain (T1 > 0) is grey matter
(``gm``) or white matter (``wm``) where that tissue's probability is at least 0.5; partial-volume
voxels and CSF belong to no region, so a small misregistration barely moves a regional mean.
Each tissue is split, in world (MNI) millimetres, by

- hemisphere: ``left`` x < 0, ``right`` x > 0 (the midline plane x = 0 is left out);
- coronal thirds: ``posterior`` y < -45, ``middle`` -45 <= y < -5, ``anterior`` y >= -5;
- axial halves: ``inferior`` z < 10, ``superior`` z >= 10.

The cut points split the template's brain voxels into near-equal thirds and halves. That
makes 2 x 2 x 3 x 2 = 24 regions, named ``gm_left_posterior_inferior`` etc. (cerebellar grey
matter falls in the posterior inferior regions).
"""

from __future__ import annotations

import functools
import itertools

import nibabel as nb
import numpy as np
from scipy import ndimage as ndi

from mrctprep.imaging.io import load_mni152_unit_map

_TISSUES = ('gm', 'wm')
_HEMISPHERES = ('left', 'right')
_CORONAL = ('posterior', 'middle', 'anterior')
_AXIAL = ('inferior', 'superior')
_CORONAL_CUTS_MM = (-45.0, -5.0)
_AXIAL_CUT_MM = 10.0

#: Region names; region ``REGIONS[k]`` has label ``k + 1`` in the atlas (0: no region).
REGIONS = tuple(
    '_'.join(parts) for parts in itertools.product(_TISSUES, _HEMISPHERES, _CORONAL, _AXIAL)
)


def regional_means(img: nb.Nifti1Image) -> dict[str, float]:
    """Mean intensity of each region over its voxels above 0 (the skull-stripped brain).

    ``img`` must be in MNI space (any grid: the atlas is resampled onto it). A region with no
    voxel above 0 on the image (cropped away, say) has mean NaN.
    """
    data = np.asanyarray(img.dataobj, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f'regional means need a 3D image, not shape {data.shape}')
    labels = region_atlas(data.shape, img.affine)
    inside = data > 0
    counts = np.bincount(labels[inside], minlength=len(REGIONS) + 1)
    sums = np.bincount(labels[inside], weights=data[inside], minlength=len(REGIONS) + 1)
    with np.errstate(invalid='ignore', divide='ignore'):
        means = sums / counts
    return {name: float(means[k + 1]) for k, name in enumerate(REGIONS)}


def region_atlas(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The region labels (uint8, 0 = none) on the grid ``shape`` x ``affine``, cached per grid."""
    return _region_atlas(tuple(int(n) for n in shape), tuple(np.asarray(affine, float).ravel()))


@functools.lru_cache(maxsize=8)
def _region_atlas(shape: tuple[int, ...], affine: tuple[float, ...]) -> np.ndarray:
    template_labels, template_affine = _template_atlas()
    target_affine = np.reshape(affine, (4, 4))
    # Nearest neighbour keeps the labels; on a 1 mm grid offset by whole millimetres from the
    # template's (FSL's MNI grid is) every voxel centre lands exactly on a template voxel.
    to_template = np.linalg.inv(template_affine) @ target_affine
    labels = ndi.affine_transform(
        template_labels, to_template, output_shape=shape, order=0, mode='constant', cval=0
    )
    labels.flags.writeable = False  # shared by every caller through the cache
    return labels


@functools.cache
def _template_atlas() -> tuple[np.ndarray, np.ndarray]:
    """The region labels on nilearn's ICBM 2009a grid, and that grid's affine."""
    t1, affine = load_mni152_unit_map('t1')
    brain = t1 > 0
    tissue = np.select(
        [
            brain & (load_mni152_unit_map('gm')[0] >= 0.5),
            brain & (load_mni152_unit_map('wm')[0] >= 0.5),
        ],
        [1, 2],
        0,
    )
    world = nb.affines.apply_affine(affine, np.moveaxis(np.indices(t1.shape), 0, -1))
    x, y, z = np.moveaxis(world, -1, 0)
    hemisphere = np.select([x < 0, x > 0], [1, 2], 0)
    coronal = 1 + np.digitize(y, _CORONAL_CUTS_MM)
    axial = 1 + (z >= _AXIAL_CUT_MM)
    # Label = position in REGIONS + 1: the product order tissue, hemisphere, coronal, axial.
    index = (
        (tissue - 1) * len(_HEMISPHERES) * len(_CORONAL) * len(_AXIAL)
        + (hemisphere - 1) * len(_CORONAL) * len(_AXIAL)
        + (coronal - 1) * len(_AXIAL)
        + (axial - 1)
    )
    labels = np.where((tissue > 0) & (hemisphere > 0), index + 1, 0).astype(np.uint8)
    return labels, affine
