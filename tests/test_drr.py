"""The drr pipeline: physics tables, analytic phantoms, C-arm geometry, a real CT, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nb
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA, run_cli, write_bids
from helpers.drr_projection import project_points
from mrctprep.cli.main import run
from mrctprep.imaging.drr.geometry import (
    CArm,
    Placement,
    gensyn_angled_views,
    view_geometry,
    view_grid,
)
from mrctprep.imaging.drr.physics import (
    add_poisson_noise,
    hu_to_density,
    label_map_materials,
    polyenergetic_intensity,
    threshold_materials,
)
from mrctprep.imaging.drr.presets import PRESETS, resolve_drr_settings
from mrctprep.imaging.drr.renderer import Projector
from mrctprep.imaging.drr.simulate import isocentre_in_world, simulate_drr
from mrctprep.imaging.drr.tables import (
    MATERIALS,
    effective_mass_attenuation,
    load_spectrum,
    mass_attenuation,
)

ABDOMEN_CT = SHARED_DATA / 'ct' / 'totalseg_example_ct.nii.gz'
HEAD_FIRST_SUPINE, FEET_FIRST_PRONE = Placement(True, True), Placement(False, False)


def _centred_affine(shape, spacing) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * np.array(spacing)
    return affine


def _world_grid(shape, affine) -> np.ndarray:
    """World (x, y, z) of every voxel centre, shape (*shape, 3)."""
    return nb.affines.apply_affine(affine, np.moveaxis(np.indices(shape), 0, -1))


def _partial_volume_hu(signed_distance_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Water (0 HU) inside a surface, air (-1000 HU) outside, a one-voxel ramp across it."""
    inside = np.clip(0.5 - signed_distance_mm / voxel_mm, 0.0, 1.0)
    return (-1000.0 + 1000.0 * inside).astype(np.float32)


def _line_integral_settings(views, placement=HEAD_FIRST_SUPINE, pixels=48, pixel_size=8.0):
    settings = resolve_drr_settings(
        'deepdrr',
        angles=views,
        output='line-integral',
        detector_pixels=pixels,
        pixel_size_mm=pixel_size,
    )
    return replace(settings, placement=placement)


# -- physics -----------------------------------------------------------------------------------


def test_density_curve_follows_deepdrrs_calibration_points():
    # The (HU, g/cm^3) pairs DeepDRR fitted its two lines to (deepdrr/load_dicom.py).
    hu = torch.tensor([-1000.0, -98.0, 14.0, 23.0, 100.0, 1600.0])
    expected = torch.tensor([0.00121, 0.93, 1.03, 1.031, 1.119, 1.92])
    density = hu_to_density(hu)
    assert torch.allclose(density, expected, atol=0.06)
    assert torch.all(torch.diff(hu_to_density(torch.linspace(-1100, 3000, 200))) >= 0)
    assert hu_to_density(torch.tensor([-3024.0])).item() == 0.0


def test_attenuation_tables_are_nists_and_spectra_are_ordered():
    # NIST SRD 126 table values (cm^2/g) at tabulated energies.
    assert mass_attenuation('soft tissue', np.array([60.0]))[0] == pytest.approx(0.2048)
    assert mass_attenuation('bone', np.array([30.0]))[0] == pytest.approx(1.331)
    assert mass_attenuation('air', np.array([100.0]))[0] == pytest.approx(0.1541)
    between = mass_attenuation('bone', np.array([70.0]))[0]
    assert mass_attenuation('bone', np.array([80.0]))[0] < between < 0.3148
    means = []
    for kvp in (60, 90, 120):
        spectrum = load_spectrum(kvp)
        assert spectrum.photon_fractions.sum() == pytest.approx(1.0)
        assert spectrum.energies_kev.max() <= kvp and spectrum.photon_fractions.min() >= 0
        means.append(spectrum.mean_energy_kev)
    assert 30 < means[0] < means[1] < means[2] < 70
    bone, soft = effective_mass_attenuation(load_spectrum(90))[[2, 1]]
    assert bone > 2 * soft  # bone's photoelectric absorption dominates at diagnostic energies


def test_materials_by_threshold_and_by_label_map():
    hu = torch.tensor([-1000.0, -800.0, -799.0, 40.0, 350.0, 351.0, 1200.0])
    assert threshold_materials(hu).tolist() == [0, 0, 1, 1, 1, 2, 2]
    labels = torch.tensor([0, 0, 0, 7, 0, 3, 0])
    materials = label_map_materials(hu, labels, {7: 'bone', 3: 'soft tissue'})
    assert materials.tolist() == [0, 0, 1, 2, 1, 1, 2]
    with pytest.raises(ValueError, match='unknown materials'):
        label_map_materials(hu, labels, {7: 'metal'})


def test_polyenergetic_intensity_and_poisson_noise():
    spectrum = load_spectrum(90)
    nothing = torch.zeros((len(MATERIALS), 4))
    intensity, probability = polyenergetic_intensity(nothing, spectrum)
    assert torch.allclose(intensity, torch.tensor(spectrum.mean_energy_kev, dtype=torch.float32))
    assert torch.allclose(probability, torch.ones(4))
    # 20 cm of water-like soft tissue hardens the beam: mean energy per surviving photon rises.
    water = torch.zeros((len(MATERIALS), 1))
    water[1] = 20.0
    intensity, probability = polyenergetic_intensity(water, spectrum)
    assert 0 < probability.item() < 0.1
    assert intensity.item() / probability.item() > spectrum.mean_energy_kev

    flat = torch.full((200, 200), 40.0)
    survival = torch.full((200, 200), 0.5)
    noisy = add_poisson_noise(flat, survival, 1e4, torch.Generator().manual_seed(1))
    again = add_poisson_noise(flat, survival, 1e4, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    # Relative noise of a pixel that receives 5000 photons on average: 1/sqrt(5000).
    assert noisy.std().item() / 40.0 == pytest.approx(1 / np.sqrt(5000), rel=0.05)
    assert noisy.mean().item() == pytest.approx(40.0, rel=1e-3)


# -- analytic phantoms ---------------------------------------------------------------------------


def _ray_box_length(source, direction, low, high):
    """Length (mm) of each ray (source + t direction, t >= 0, unit directions) inside a box."""
    with np.errstate(divide='ignore', invalid='ignore'):
        t0 = (low - source) / direction
        t1 = (high - source) / direction
    near = np.nanmax(np.minimum(t0, t1), axis=-1).clip(min=0)
    far = np.nanmin(np.maximum(t0, t1), axis=-1)
    return (far - near).clip(min=0)


def _pixel_rays(geometry):
    pixels = geometry.pixels
    rows, cols = np.meshgrid(np.arange(pixels), np.arange(pixels), indexing='ij')
    targets = (
        geometry.first_pixel
        + cols[..., None] * geometry.column_step
        + rows[..., None] * geometry.row_step
    )
    directions = targets - geometry.source
    return directions / np.linalg.norm(directions, axis=-1, keepdims=True)


@pytest.mark.parametrize('placement', [HEAD_FIRST_SUPINE, FEET_FIRST_PRONE], ids=str)
@pytest.mark.parametrize('phantom', ['sphere', 'cylinder'])
def test_line_integrals_of_water_phantoms_match_chord_lengths(phantom, placement):
    shape, voxel = (80, 80, 80), 2.5
    affine = _centred_affine(shape, (voxel,) * 3)
    world = _world_grid(shape, affine)
    radius = 70.0 if phantom == 'sphere' else 60.0
    if phantom == 'sphere':
        distance = np.linalg.norm(world, axis=-1) - radius
    else:  # along the patient's long axis (world z), through the whole volume
        distance = np.linalg.norm(world[..., :2], axis=-1) - radius
    ct = nb.Nifti1Image(_partial_volume_hu(distance, voxel), affine)
    views = [(0.0, 0.0), (30.0, 0.0), (-45.0, 20.0), (90.0, -10.0)]
    settings = _line_integral_settings(views, placement)
    images = simulate_drr(ct, settings)

    spectrum = load_spectrum(settings.kvp)
    mu_air, mu_water = effective_mass_attenuation(spectrum)[[0, 1]]
    water, air = hu_to_density(torch.tensor([0.0, -1000.0])).tolist()
    half_box = np.array(shape) / 2 * voxel
    for rendered in images:
        source = rendered.geometry.source
        rays = _pixel_rays(rendered.geometry)
        box = _ray_box_length(source, rays, -half_box, half_box)
        if phantom == 'sphere':
            miss = np.linalg.norm(np.cross(rays, source), axis=-1)
            chord = 2 * np.sqrt((radius**2 - miss**2).clip(min=0))
        else:
            # The ray's xy-projection against the circle: where it enters and leaves (mm).
            flat_source, flat_rays = source[:2], rays[..., :2]
            speed = np.linalg.norm(flat_rays, axis=-1)
            along = -(flat_rays @ flat_source) / speed**2
            miss = np.abs(flat_rays[..., 0] * flat_source[1] - flat_rays[..., 1] * flat_source[0])
            miss /= speed
            half_time = np.sqrt((radius**2 - miss**2).clip(min=0)) / speed
            chord = 2 * half_time
        expected = (chord * water * mu_water + (box - chord) * air * mu_air) / 10.0
        # Away from edges: rays within 80% of the radius (a chord near the rim is so sensitive
        # to the radius that the partial-volume edge alone shifts it); for the cylinder, water
        # segments a voxel clear of the volume's top and bottom faces, where it is cut.
        inner = miss < 0.8 * radius
        if phantom == 'cylinder':
            clear = half_box[2] - voxel
            for end in (along - half_time, along + half_time):
                inner &= np.abs(source[2] + rays[..., 2] * end) < clear
        assert inner.sum() > 100, rendered.label
        error = np.abs(rendered.image[inner] / expected[inner] - 1)
        assert error.max() < 0.01, (rendered.label, error.max())


# -- geometry -------------------------------------------------------------------------------------


def test_a_bead_lands_where_the_projection_matrix_says_for_every_view():
    # An oblique, anisotropic grid: world coordinates must come from the affine alone.
    shape, spacing = (64, 72, 56), (1.3, 1.1, 1.6)
    rotation = nb.eulerangles.euler2mat(0.3, -0.2, 0.15)
    affine = np.eye(4)
    affine[:3, :3] = rotation * spacing
    affine[:3, 3] = [12.0, -40.0, 75.0] - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    world = _world_grid(shape, affine)
    bead = nb.affines.apply_affine(affine, (np.array(shape) - 1) / 2) + [18.0, -14.0, 22.0]
    blob = 3000.0 * np.exp(-np.sum((world - bead) ** 2, axis=-1) / (2 * 1.5**2))
    background = np.full(shape, -1000.0, dtype=np.float32)
    views = view_grid(-20.0, 20.0, 10.0)
    settings = _line_integral_settings(views, pixels=64, pixel_size=2.5)
    plain = simulate_drr(nb.Nifti1Image(background, affine), settings)
    beaded = simulate_drr(nb.Nifti1Image(background + blob.astype(np.float32), affine), settings)
    errors = []
    for with_bead, without in zip(beaded, plain, strict=True):
        difference = with_bead.image - without.image
        rows, cols = np.indices(difference.shape)
        weight = difference.clip(min=0)
        found = np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
        matrix = np.array(with_bead.metadata['ProjectionMatrix'])
        errors.append(np.linalg.norm(found - project_points(matrix, bead)))
    assert len(errors) == 25
    assert max(errors) < 0.5, errors


def test_opposite_angles_give_mirror_images():
    # Symmetric left-right and head-feet about the isocentre, not front-back.
    shape, voxel = (64, 64, 64), 3.0
    affine = _centred_affine(shape, (voxel,) * 3)
    world = _world_grid(shape, affine)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    for centre, radius in [
        ((40, 0, 30), 18),
        ((-40, 0, 30), 18),
        ((40, 0, -30), 18),
        ((-40, 0, -30), 18),
        ((0, 35, 0), 22),
    ]:
        hu = np.maximum(
            hu, _partial_volume_hu(np.linalg.norm(world - centre, axis=-1) - radius, voxel)
        )
    settings = _line_integral_settings(
        [(10.0, 5.0), (-10.0, 5.0), (10.0, -5.0)], pixels=64, pixel_size=4.0
    )
    base, orbital_mirror, angulation_mirror = (
        view.image for view in simulate_drr(nb.Nifti1Image(hu, affine), settings)
    )
    scale = base.max()
    assert np.abs(base - orbital_mirror[:, ::-1]).max() < 1e-4 * scale
    assert np.abs(base - angulation_mirror[::-1, :]).max() < 1e-4 * scale
    assert np.abs(base - orbital_mirror).max() > 0.05 * scale
    assert np.abs(base - angulation_mirror).max() > 0.05 * scale


def test_view_names_presets_and_grids():
    assert len(gensyn_angled_views()) == 20
    assert len(PRESETS['gensyn-angled'].view_labels) == 20
    assert len(view_grid(-10, 10, 5)) == 25
    supine = resolve_drr_settings(angles=[(0, 0), (180, 0), (10, 5), (-10, -5), (0, 15)])
    assert supine.view_labels == ['pa', 'ap', 'rao10cau5', 'lao10cra5', 'pacau15']
    with pytest.raises(ValueError, match='several views'):
        resolve_drr_settings(angles=[(180, 0), (-180, 0)])
    # The source of a (0, 0) view lies below the table: behind a supine patient.
    carm = PRESETS['deepdrr'].carm
    geometry = view_geometry(carm, HEAD_FIRST_SUPINE, np.zeros(3), 0.0, 0.0)
    assert geometry.source == pytest.approx([0.0, -carm.source_to_isocentre_mm, 0.0])
    # The isocentre always projects onto the detector's centre.
    for orbital, angulation in [(0, 0), (33, -12), (-120, 40)]:
        geometry = view_geometry(
            CArm(1000, 600, 101, 1.0),
            FEET_FIRST_PRONE,
            np.array([5.0, 6.0, 7.0]),
            orbital,
            angulation,
        )
        centre = project_points(geometry.projection_matrix, np.array([5.0, 6.0, 7.0]))
        assert centre == pytest.approx([50.0, 50.0])


# -- a real CT --------------------------------------------------------------------------------


def test_abdominal_ct_ap_view_is_left_right_correct_with_the_spine_in_the_middle():
    ct = nb.load(ABDOMEN_CT)
    hu = np.asanyarray(ct.dataobj, dtype=np.float32)
    centre = isocentre_in_world(ct, PRESETS['deepdrr'])
    # A dense marker on the patient's left (RAS: -x), toward the head.
    marker = centre + [-80.0, 0.0, 60.0]
    marker_voxel = np.rint(nb.affines.apply_affine(np.linalg.inv(ct.affine), marker)).astype(int)
    marked = hu.copy()
    marked[tuple(slice(v - 1, v + 2) for v in marker_voxel)] = 3000.0
    settings = _line_integral_settings([(180.0, 0.0), (0.0, 0.0)], pixels=128, pixel_size=3.0)
    ap, pa = simulate_drr(nb.Nifti1Image(marked, ct.affine), settings)
    plain_ap = simulate_drr(nb.Nifti1Image(hu, ct.affine), settings)[0]
    assert (ap.label, pa.label) == ('ap', 'pa')

    middle = (settings.carm.pixels - 1) / 2
    difference = ap.image - plain_ap.image
    row, column = np.unravel_index(np.argmax(difference), difference.shape)
    assert column > middle + 20  # the patient's left on the image's right
    assert row < middle - 10  # the head at the top
    # In the PA view (seen from behind) the same marker is on the left.
    assert (
        np.argmax(
            (pa.image - simulate_drr(nb.Nifti1Image(hu, ct.affine), settings)[1].image).max(axis=0)
        )
        < middle - 20
    )

    # Bone alone: the lumbar spine is the densest column in the upper half of the AP view.
    bone_only = np.where(hu > 350, hu, -1000.0).astype(np.float32)
    bones = simulate_drr(nb.Nifti1Image(bone_only, ct.affine), settings)[0].image
    spine_column = np.argmax(bones[: settings.carm.pixels // 2].sum(axis=0))
    assert abs(spine_column - middle) < settings.carm.pixels / 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_and_cpu_agree():
    ct = nb.load(ABDOMEN_CT)
    volume = torch.as_tensor(np.asanyarray(ct.dataobj, dtype=np.float32))[None] + 1000
    geometry = [
        view_geometry(
            CArm(1020, 530, 96, 3.0),
            HEAD_FIRST_SUPINE,
            isocentre_in_world(ct, PRESETS['deepdrr']),
            15.0,
            -5.0,
        )
    ]
    on_cpu = Projector(volume, ct.affine).integrate(geometry)
    on_gpu = Projector(volume.cuda(), ct.affine).integrate(geometry).cpu()
    assert torch.allclose(on_cpu, on_gpu, rtol=1e-4, atol=1e-2)


# -- command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'bad',
    [
        ['--drr-angles', '10;5'],
        ['--drr-angles', 'a,b'],
        ['--drr-view-grid', '10:-10:5'],
        ['--drr-view-grid', '0:10'],
        ['--drr-kvp', '100'],
        ['--drr-detector', '0'],
        ['--drr-sdd', '-5'],
        ['--drr-output', 'png'],
        ['--drr-angles', '180,0;-180,0'],
        ['--drr-angles', '0,0', '--drr-view-grid', '0:10:5'],
    ],
)
def test_bad_drr_options_are_usage_errors(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run([str(tmp_path), str(tmp_path / 'out'), 'participant', *bad])
    assert exit_info.value.code == 2
    assert 'error:' in capsys.readouterr().err


def test_drr_pipeline_end_to_end(tmp_path):
    bids = write_bids(tmp_path / 'bids', {'sub-01/anat/sub-01_ct.nii.gz': ABDOMEN_CT}, ['01'])
    out = tmp_path / 'out'
    result = run_cli(
        bids,
        out,
        'participant',
        '-w',
        tmp_path / 'work',
        '--pipelines',
        'drr',
        '--drr-detector',
        '96',
        '--drr-pixel-size',
        '4',
        '--drr-angles',
        '0,0;10,5',
        '--nprocs',
        '1',
        '--omp-nthreads',
        '1',
    )
    assert result.returncode == 0, result.stderr
    anat = out / 'sub-01' / 'anat'
    ct = nb.load(ABDOMEN_CT)
    for label in ('pa', 'rao10cau5'):
        drr = nb.load(anat / f'sub-01_desc-{label}_drr.nii.gz')
        sidecar = json.loads((anat / f'sub-01_desc-{label}_drr.json').read_text())
        png = Image.open(anat / f'sub-01_desc-{label}_drr.png')
        data = np.asanyarray(drr.dataobj)
        assert drr.get_data_dtype() == np.float32 and data.shape == (96, 96)
        assert png.mode == 'I;16' and png.size == (96, 96)
        assert sidecar['Sources'] == ['bids:raw:sub-01/anat/sub-01_ct.nii.gz']
        assert sidecar['DRRView'] == label and sidecar['Spectrum']['kVp'] == 90
        # The PNG is the NIfTI's (column, row) array as rows, scaled to 16 bits.
        expected_png = np.rint(data.T * sidecar['PNGScale'])
        assert np.abs(np.asarray(png, dtype=np.float64) - expected_png).max() <= 1
        # The projection matrix maps each pixel's world position (NIfTI affine) to its index,
        # the source to nothing, and the isocentre (the CT's centre) to the image centre.
        matrix = np.array(sidecar['ProjectionMatrix'])
        indices = np.array([[0, 0, 0], [95, 0, 0], [0, 95, 0], [40, 70, 0]])
        pixel_world = nb.affines.apply_affine(drr.affine, indices)
        assert project_points(matrix, pixel_world) == pytest.approx(indices[:, :2], abs=1e-3)
        centre = nb.affines.apply_affine(ct.affine, (np.array(ct.shape) - 1) / 2)
        at_source = matrix @ np.append(sidecar['SourcePosition'], 1.0)
        assert np.abs(at_source).max() < 1e-5 * np.abs(matrix @ np.append(centre, 1.0)).max()
        assert project_points(matrix, centre) == pytest.approx([47.5, 47.5], abs=1e-3)
    assert (out / 'sub-01' / 'figures' / 'sub-01_desc-drr_ct.png').stat().st_size > 10_000
    assert 'pa\t' in (out / 'descriptions.tsv').read_text()
