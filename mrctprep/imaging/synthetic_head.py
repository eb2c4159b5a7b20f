"""Synthetic heads built from the MNI152 template that ships with nilearn.

The template (ICBM 2009a nonlinear symmetric, 1 mm) is brain only. These functions wrap its
tissue maps in a head (CSF rim, skull with inner/outer tables and diploe, scalp, neck), deform
it into further anatomies, place it in a scanner at a pose and render T1-weighted MR signal or
CT Hounsfield units from it.

Tissues are float32 fraction maps on one voxel grid; air is whatever fraction they leave, so
every boundary carries partial volume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from nibabel.affines import apply_affine, from_matvec, voxel_sizes
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage as ndi

from mrctprep.imaging.axes import three
from mrctprep.imaging.io import load_mni152_unit_map

#: Tissue classes whose fractions, together with air, add up to one in every voxel.
TISSUE_CLASSES = ('gm', 'wm', 'csf', 'outer_csf', 'cortical_bone', 'diploe', 'fat', 'muscle')

#: Hounsfield units of each tissue class in a non-contrast head CT.
CT_HU = {
    'gm': 40.0,
    'wm': 30.0,
    'csf': 5.0,
    'outer_csf': 5.0,
    'cortical_bone': 1500.0,
    'diploe': 700.0,
    'fat': -100.0,
    'muscle': 50.0,
}
AIR_HU = -1000.0
CT_HU_RANGE = (-1024, 3071)


@dataclass(frozen=True)
class HeadModel:
    """Tissue maps of one anatomy on an axis-aligned RAS voxel grid.

    ``maps`` holds float32 fractions for (some of) TISSUE_CLASSES, plus ``brain`` (the
    template's brain mask) and ``t1`` (the template's T1 intensity, white matter = 1, zero
    outside the brain).
    """

    maps: dict[str, np.ndarray]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.maps['brain'].shape

    @property
    def voxel_size(self) -> np.ndarray:
        return voxel_sizes(self.affine)


@dataclass(frozen=True)
class T1Contrast:
    """How one scanner renders tissues in a T1-weighted image.

    ``gamma`` bends the template's brain intensities (> 1 widens the grey/white gap, as at 3 T
    with MPRAGE; < 1 narrows it, as at 1.5 T with SPGR); the other levels are relative to white
    matter, whose signal is ``white_matter`` in stored units.
    """

    gamma: float
    white_matter: float
    fat: float
    diploe: float
    cortical_bone: float
    muscle: float


def load_mni152_tissues(margin_mm: float = 20.0) -> HeadModel:
    """The template's brain: T1 intensity, brain mask and GM/WM/CSF fractions.

    The grid is cropped to the brain plus ``margin_mm`` (room for the head to be built around
    it); the template's lowest slice already cuts through the brainstem, so nothing is added
    below it.
    """
    t1, affine = load_mni152_unit_map('t1')
    brain = (t1 > 0).astype(np.float32)
    # The probability maps leak a little beyond the skull-stripped T1; the T1 mask is the brain.
    gm = load_mni152_unit_map('gm')[0] * brain
    wm = load_mni152_unit_map('wm')[0] * brain
    csf = np.clip(brain - gm - wm, 0, 1)
    t1 /= np.median(t1[wm > 0.9])

    margin = np.ceil(margin_mm / voxel_sizes(affine)).astype(int)
    inside = np.argwhere(brain > 0)
    lo = np.maximum(inside.min(axis=0) - margin, 0)
    hi = np.minimum(inside.max(axis=0) + margin + 1, brain.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    maps = {'t1': t1, 'brain': brain, 'gm': gm, 'wm': wm, 'csf': csf}
    return HeadModel(
        maps={name: np.ascontiguousarray(m[crop]) for name, m in maps.items()},
        affine=affine @ from_matvec(np.eye(3), lo),
    )


def smooth_random_field(
    shape: tuple[int, ...],
    voxel_size: np.ndarray,
    wavelength_mm: tuple[float, float],
    rng: np.random.Generator,
    n_waves: int = 6,
) -> np.ndarray:
    """A smooth random field in [-1, 1] made of a few low-frequency separable waves.

    Separable products of cosines cost a few passes over the grid, unlike smoothing white noise
    with a kernel tens of millimetres wide.
    """
    axes = [
        np.arange(n, dtype=np.float32) * np.float32(v)
        for n, v in zip(shape, voxel_size, strict=True)
    ]
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(n_waves):
        waves = [
            np.cos(
                np.float32(2 * np.pi / rng.uniform(*wavelength_mm)) * coords
                + np.float32(rng.uniform(0, 2 * np.pi))
            )
            for coords in axes
        ]
        weight = np.float32(rng.uniform(-1, 1))
        x, y, z = waves
        field += weight * x[:, None, None] * y[None, :, None] * z[None, None, :]
    field /= np.abs(field).max()
    return field


def smooth_deformation(
    shape: tuple[int, ...],
    voxel_size: np.ndarray,
    amplitude_mm: float,
    rng: np.random.Generator,
    wavelength_mm: tuple[float, float] = (80.0, 200.0),
) -> np.ndarray:
    """A smooth displacement field, shape ``(3, *shape)``, in voxels; at most ``amplitude_mm``.

    Wavelengths well above the amplitude keep the mapping one-to-one (no folding).
    """
    return np.stack(
        [
            smooth_random_field(shape, voxel_size, wavelength_mm, rng)
            * np.float32(amplitude_mm / v)
            for v in voxel_size
        ]
    )


def warp(array: np.ndarray, displacement: np.ndarray, order: int = 1) -> np.ndarray:
    """Resample ``array`` at every voxel plus its displacement (pull-back, float32).

    Edges are extended, not zeroed, because the template's lowest slice is a cut through the
    neck rather than the end of the anatomy.
    """
    coords = np.indices(array.shape, dtype=np.float32)
    coords += displacement
    return ndi.map_coordinates(array, coords, order=order, mode='nearest', output=np.float32)


def deform_head_model(model: HeadModel, displacement: np.ndarray) -> HeadModel:
    """Another anatomy: every map of ``model`` warped by the same displacement field."""
    maps = {name: warp(m, displacement) for name, m in model.maps.items() if name != 'csf'}
    # Recomputing CSF from the warped maps keeps the fractions adding up to the brain mask.
    maps['csf'] = np.clip(maps['brain'] - maps['gm'] - maps['wm'], 0, 1)
    return HeadModel(maps=maps, affine=model.affine)


def add_scalp_and_skull(model: HeadModel, rng: np.random.Generator) -> HeadModel:
    """Wrap the brain in a CSF rim, skull (tables + diploe), scalp and a neck.

    Layers are offsets from a smoothed brain envelope, with thicknesses that vary smoothly over
    the head (CSF 1.25-2.75 mm, skull 5-7 mm with 1.5 mm tables, scalp 4.25-5.75 mm), so the
    outline is an ovoid rather than a copy of the gyri.
    """
    shape, voxel_size = model.shape, model.voxel_size
    brain = model.maps['brain']
    envelope = (ndi.gaussian_filter(brain, sigma=4.0 / voxel_size) > 0.25) | (brain >= 0.5)
    # Distance of each voxel centre beyond the envelope surface (half a voxel out from the mask).
    beyond = ndi.distance_transform_edt(~envelope, sampling=voxel_size).astype(np.float32)
    beyond -= np.float32(0.5 * voxel_size.min())

    def within(offset_mm: np.ndarray) -> np.ndarray:
        """Fraction of each voxel lying within ``offset_mm`` of the envelope (1 mm ramp)."""
        return np.clip(offset_mm - beyond + np.float32(0.5), 0, 1)

    def thickness(mean: float, spread: float) -> np.ndarray:
        field = smooth_random_field(shape, voxel_size, (60.0, 160.0), rng, n_waves=4)
        return np.float32(mean) + np.float32(spread) * field

    # Outer edge of each layer, in mm beyond the envelope.
    table = np.float32(1.5)
    csf_edge = thickness(2.0, 0.75)
    skull_edge = csf_edge + thickness(6.0, 1.0)
    scalp_edge = skull_edge + thickness(5.0, 0.75)

    intracranial = np.maximum(within(csf_edge), brain)
    inner_table = np.clip(within(csf_edge + table) - intracranial, 0, 1)
    diploe = within(skull_edge - table) - within(csf_edge + table)
    outer_table = within(skull_edge) - within(skull_edge - table)
    head = within(scalp_edge)
    neck, neck_core = _neck_column(model)
    free = 1 - head
    maps = dict(model.maps)
    maps.update(
        outer_csf=intracranial - brain,
        cortical_bone=inner_table + outer_table,
        diploe=diploe,
        fat=head - within(skull_edge) + (neck - neck_core) * free,
        muscle=neck_core * free,
    )
    return HeadModel(maps=maps, affine=model.affine)


def _neck_column(
    model: HeadModel, semi_axes_mm: tuple[float, float] = (52.0, 50.0), fat_mm: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Fractions of an elliptic soft-tissue column under the skull base, and of its muscle core.

    Without it the layers would close in a narrow tube around the brainstem. The column is
    centred a little in front of the brainstem (where the neck is) and rises to 10 mm above
    the lowest slice where the brain is wider than the brainstem (the bottom of the
    cerebellum); the head layers hide its top.
    """
    brain = model.maps['brain'] > 0.5
    area = brain.sum(axis=(0, 1))
    top = np.float32(np.argmax(area > 0.15 * area.max()) + round(10.0 / model.voxel_size[2]))
    stem_i, stem_j = np.argwhere(brain[:, :, 0]).mean(axis=0)
    i, j, k = (np.arange(n, dtype=np.float32) for n in model.shape)
    x = (i - stem_i) * np.float32(model.voxel_size[0])
    y = (j - stem_j) * np.float32(model.voxel_size[1]) - np.float32(10.0)
    a, b = semi_axes_mm
    radius = np.sqrt((x[:, None] / a) ** 2 + (y[None, :] / b) ** 2)
    # Signed distance to the ellipse, close enough for a 1 mm partial-volume ramp.
    outside_mm = (radius - 1) * np.float32((a + b) / 2)
    below_top = np.clip(top - k + np.float32(0.5), 0, 1)
    column = np.clip(np.float32(0.5) - outside_mm, 0, 1)[:, :, None] * below_top
    core = np.clip(np.float32(0.5 - fat_mm) - outside_mm, 0, 1)[:, :, None] * below_top
    return column, core


def head_mask(model: HeadModel) -> np.ndarray:
    """Voxels that are mostly tissue rather than air."""
    tissues = [model.maps[name] for name in TISSUE_CLASSES if name in model.maps]
    return sum(tissues, np.zeros(model.shape, np.float32)) > 0.5


def t1w_from_tissues(model: HeadModel, contrast: T1Contrast) -> np.ndarray:
    """Noise-free T1-weighted signal (float32, stored units) of a head model."""
    maps = model.maps
    gamma = np.float32(contrast.gamma)
    # Sulcal and ventricular CSF keep the template's own intensity; the rim CSF borrows it.
    csf_level = np.median(maps['t1'][maps['csf'] > 0.95]) ** gamma
    signal = maps['t1'] ** gamma
    signal += np.float32(csf_level) * maps['outer_csf']
    for name in ('fat', 'diploe', 'cortical_bone', 'muscle'):
        signal += np.float32(getattr(contrast, name)) * maps[name]
    signal *= np.float32(contrast.white_matter)
    return signal


def bias_field(
    shape: tuple[int, ...], voxel_size: np.ndarray, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth multiplicative receive-coil field between 1 - strength and 1 + strength."""
    return 1 + np.float32(strength) * smooth_random_field(shape, voxel_size, (150.0, 400.0), rng)


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise, as a magnitude MR image has."""
    sd = np.float32(sigma)
    real = signal + sd * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sd * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(real, imaginary)


def ct_hu_from_tissues(model: HeadModel, hu: Mapping[str, float] = CT_HU) -> np.ndarray:
    """Noise-free CT attenuation in HU (float32): the fraction-weighted mix of tissue HU."""
    image = np.full(model.shape, AIR_HU, dtype=np.float32)
    for name, value in hu.items():
        image += np.float32(value - AIR_HU) * model.maps[name]
    return image


def add_ct_noise(
    hu: np.ndarray, sd_hu: float, correlation_vox: float, rng: np.random.Generator
) -> np.ndarray:
    """Add Gaussian noise of ``sd_hu`` whose grain (the kernel's blur) is ``correlation_vox``."""
    noise = ndi.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), correlation_vox)
    noise *= np.float32(sd_hu) / noise.std()
    return hu + noise


def to_int16_hu(hu: np.ndarray) -> np.ndarray:
    """Round to integer HU within the 12-bit range a CT scanner stores."""
    return np.clip(np.rint(hu), *CT_HU_RANGE).astype(np.int16)


def head_pose(
    rotation_deg: tuple[float, float, float],
    translation_mm: tuple[float, float, float],
    centre_mm: np.ndarray,
) -> np.ndarray:
    """Rigid world transform (4x4) that rotates the head about ``centre_mm`` then shifts it.

    Rotations are about the x (pitch), y (roll) and z (yaw) axes, applied in that order.
    """
    rx, ry, rz = np.deg2rad(rotation_deg)
    pitch = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    roll = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    yaw = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    rotation = yaw @ roll @ pitch
    centre = np.asarray(centre_mm, dtype=float)
    return from_matvec(rotation, centre + np.asarray(translation_mm) - rotation @ centre)


def acquisition_grid(
    head: np.ndarray,
    affine: np.ndarray,
    pose: np.ndarray,
    *,
    voxel_size: tuple[float, float, float],
    orientation: str,
    margin_mm: float = 4.0,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a scanner-aligned grid covering the posed ``head`` mask.

    The grid's axes are the world axes, stored in the voxel order ``orientation`` (e.g.
    ``'RAS'``, ``'LPS'``, ``'ASL'``). Where the head reaches the source grid's first axial slice
    (a cut through the neck), the grid's bottom stays above that posed cut: below it there is
    no anatomy to image.
    """
    # Every other voxel is plenty for a bounding box padded by a few millimetres.
    points = np.argwhere(head[::2, ::2, ::2]) * 2
    world = apply_affine(pose @ affine, points)
    lo = world.min(axis=0) - margin_mm
    hi = world.max(axis=0) + margin_mm
    at_bottom = points[:, 2] == 0
    if at_bottom.any():
        lo[2] = world[at_bottom, 2].max()
    spacing = np.asarray(voxel_size, dtype=float)
    ras_shape = np.ceil((hi - lo) / spacing).astype(int) + 1
    ras_affine = from_matvec(np.diag(spacing), lo)
    ornt = ornt_transform(axcodes2ornt('RAS'), axcodes2ornt(tuple(orientation)))
    shape = [0, 0, 0]
    for ras_axis, (axis, _) in enumerate(ornt):
        shape[int(axis)] = int(ras_shape[ras_axis])
    return three(shape), ras_affine @ inv_ornt_aff(ornt, ras_shape)


def apply_head_pose(
    array: np.ndarray,
    affine: np.ndarray,
    pose: np.ndarray,
    out_shape: tuple[int, int, int],
    out_affine: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Image ``array`` (on ``affine``) with the head at ``pose`` onto the grid ``out_affine``.

    An anatomical point at world ``p`` in the input lies at ``pose @ p`` in the output, and
    ``out_affine`` describes the output voxels exactly.
    """
    # Each output voxel pulls from: its world position, moved back out of the pose, in voxels.
    pull = np.linalg.inv(affine) @ np.linalg.inv(pose) @ out_affine
    return ndi.affine_transform(
        array,
        pull[:3, :3],
        offset=pull[:3, 3],
        output_shape=out_shape,
        order=order,
        mode='nearest',
        output=np.float32,
    )
