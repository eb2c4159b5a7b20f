"""The kernel/dose simulator's physics and ``mrctprep simulate-ct``."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from conftest import SHARED_DATA, write_bids
from mrctprep.cli.main import run as run_command
from mrctprep.imaging.ct_simulation import (
    ScanCondition,
    ScannerModel,
    add_quantum_noise,
    attenuation_to_hu,
    exposure_for_noise_index,
    forward_project,
    hu_to_attenuation,
    inscribed_circle,
    radial_noise_power_spectrum,
    reconstruct,
    simulate_slice,
    view_angles,
)

SIDE = 64
PIXEL_MM = 1.0
#: full-dose photons per bin and view for the tests of noise scaling (about 20 HU here)
PHOTONS = 2.0e5


def phantom() -> np.ndarray:
    """A water-like disk (40 HU) in air with bone, fat, air and contrast inserts."""
    rows, cols = np.ogrid[:SIDE, :SIDE]
    centre = (SIDE - 1) / 2
    image = np.full((SIDE, SIDE), -1000.0)
    image[(rows - centre) ** 2 + (cols - centre) ** 2 <= (0.42 * SIDE) ** 2] = 40.0
    for dy, dx, radius, hu in [
        (-0.18, 0, 0.08, 700.0),
        (0.18, 0, 0.08, -100.0),
        (0, 0.2, 0.06, -1000.0),
        (0, -0.2, 0.07, 200.0),
    ]:
        inside = (rows - centre - dy * SIDE) ** 2 + (cols - centre - dx * SIDE) ** 2
        image[inside <= (radius * SIDE) ** 2] = hu
    return image


@pytest.fixture(scope='module')
def projected():
    """The phantom's noise-free sinogram on the simulator's grid (the slow, shared part)."""
    side = SIDE + 2
    square = np.full((side, side), -1000.0)
    square[1:-1, 1:-1] = phantom()
    angles = view_angles(side, None)
    mu = np.where(inscribed_circle(side), hu_to_attenuation(square), 0.0)
    return forward_project(mu, PIXEL_MM, angles), angles


def _uniform_interior(image: np.ndarray) -> np.ndarray:
    """Voxels at least 3 pixels inside a uniform, non-air region."""
    flat = ndimage.generic_filter(image, np.ptp, size=3) == 0
    return ndimage.binary_erosion(flat, iterations=2) & (image > -500)


def _noise(projected, kernel: str, dose: float, seed: int) -> np.ndarray:
    return _noise_at(projected, kernel, PHOTONS * dose, seed)


def _noise_at(projected, kernel: str, photons: float, seed: int) -> np.ndarray:
    sinogram, angles = projected
    noisy = add_quantum_noise(sinogram, photons, 5.0, np.random.default_rng(seed))
    clean = reconstruct(sinogram, PIXEL_MM, angles, kernel)
    return attenuation_to_hu(reconstruct(noisy, PIXEL_MM, angles, kernel)) - attenuation_to_hu(
        clean
    )


def test_noise_free_full_dose_reconstruction_matches_the_phantom():
    truth = phantom()
    image = simulate_slice(truth, PIXEL_MM, ScanCondition('standard', 1.0), ScannerModel(), None)
    interior = _uniform_interior(truth)
    assert interior.sum() > 500
    assert np.abs(image - truth)[interior].mean() < 10.0
    for hu in (40.0, 700.0, -100.0, 200.0):
        region = interior & (truth == hu)
        assert abs(np.median(image[region]) - hu) < 15.0, hu
    # edges are blurred, not displaced: the error over the whole slice stays small
    assert np.abs(image - truth).mean() < 60.0


def test_noise_sd_scales_as_one_over_the_square_root_of_the_dose(projected):
    interior = np.pad(_uniform_interior(phantom()), 1)  # on the simulator's 66x66 grid
    sd = {
        dose: np.mean(
            [_noise(projected, 'standard', dose, seed)[interior].std() for seed in (0, 1)]
        )
        for dose in (1.0, 0.25, 0.1)
    }
    assert sd[0.25] / sd[1.0] == pytest.approx(2.0, rel=0.1)
    assert sd[0.1] / sd[1.0] == pytest.approx(np.sqrt(10.0), rel=0.1)


def test_exposure_control_meets_the_noise_index_at_any_sampling(projected):
    """The full dose found for a noise index gives that noise, with all views or half."""
    sinogram, angles = projected
    body = np.pad(_uniform_interior(phantom()), 1)
    for views in (slice(None), slice(None, None, 2)):
        sampled = (sinogram[:, views], angles[views])
        photons = exposure_for_noise_index(*sampled[:1], body, PIXEL_MM, sampled[1], 12.0)
        noise = [_noise_at(sampled, 'standard', photons, seed)[body].std() for seed in (0, 1)]
        assert np.mean(noise) == pytest.approx(12.0, rel=0.1), views


def test_sharper_filters_noise_power_peaks_at_higher_frequency(projected):
    peaks = {}
    for kernel in ('smooth', 'standard', 'sharp'):
        noise = np.stack([_noise(projected, kernel, 0.25, seed) for seed in (0, 1, 2)])
        rois = noise[:, 17:49, 17:49]  # 32x32 inside the water disk
        frequencies, nps = radial_noise_power_spectrum(rois, PIXEL_MM, bins=16)
        peaks[kernel] = frequencies[np.argmax(nps)]
    assert peaks['smooth'] < peaks['standard'] <= peaks['sharp']
    assert peaks['sharp'] >= 1.3 * peaks['smooth']


@pytest.fixture(scope='module')
def small_ct_dataset(tmp_path_factory):
    """A BIDS dataset with one small real CT: 64x64x2 voxels of the abdomen at 3 mm."""
    source = nb.load(SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz')
    crop = np.asarray(source.dataobj)[30:94, 20:84, 10:12].astype(np.int16)
    affine = source.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([30, 20, 10])
    root = tmp_path_factory.mktemp('simulate') / 'bids'
    image_file = root.parent / 'ct.nii.gz'
    nb.Nifti1Image(crop, affine).to_filename(image_file)
    write_bids(root, {'sub-01/anat/sub-01_run-1_ct.nii.gz': image_file}, ['01'])
    (root / 'sub-01/anat/sub-01_run-1_ct.json').write_text(
        json.dumps({'Modality': 'CT', 'KVP': 120, 'Exposure': 200, 'ConvolutionKernel': 'B30f'})
    )
    return root


def test_simulate_ct_writes_labelled_simulated_variants(small_ct_dataset, capsys):
    root = small_ct_dataset
    # in-process: the command line's start-up is tested elsewhere and costs seconds here
    arguments = ['simulate-ct', str(root), '--condition', 'standard:100']
    assert run_command([*arguments, '--condition', 'sharp:25']) == 0
    source = nb.load(root / 'sub-01/anat/sub-01_run-1_ct.nii.gz')
    original = np.asarray(source.dataobj, dtype=float)
    body = ndimage.binary_erosion(original > -300, structure=np.ones((5, 5, 1)))
    noise = {}
    for label, dose in (('standard100', 1.0), ('sharp25', 0.25)):
        image = nb.load(root / f'sub-01/anat/sub-01_rec-{label}_run-1_ct.nii.gz')
        assert image.get_data_dtype() == np.int16
        assert np.allclose(image.affine, source.affine)
        data = np.asarray(image.dataobj, dtype=float)
        # soft tissue stays soft tissue: the median HU in the body moves by a few HU at most
        assert abs(np.median(data[body]) - np.median(original[body])) < 15.0
        noise[label] = np.std((data - ndimage.median_filter(data, size=(3, 3, 1)))[body])
        sidecar = json.loads((root / f'sub-01/anat/sub-01_rec-{label}_run-1_ct.json').read_text())
        assert sidecar['Simulation']['Simulated'] is True
        assert sidecar['Simulation']['DoseFraction'] == dose
        assert sidecar['Simulation']['Source'] == 'bids::sub-01/anat/sub-01_run-1_ct.nii.gz'
        assert sidecar['Exposure'] == pytest.approx(200 * dose)
        assert sidecar['KVP'] == 120
        assert sidecar['ConvolutionKernel'].startswith('simulated-')
    assert noise['sharp25'] > 1.5 * noise['standard100']
    capsys.readouterr()
    assert run_command(['simulate-ct', str(root), '--condition', 'sharp:25']) == 2
    error = capsys.readouterr().err
    assert 'already has CT images' in error and '--overwrite' in error
    assert 'rec-sharp25' in error


def test_simulate_ct_skips_an_unreadable_ct_and_writes_the_others_in_parallel(
    small_ct_dataset, tmp_path, capsys
):
    good = small_ct_dataset / 'sub-01/anat/sub-01_run-1_ct.nii.gz'
    root = write_bids(
        tmp_path / 'bids',
        {'sub-01/anat/sub-01_ct.nii.gz': good, 'sub-02/anat/sub-02_ct.nii.gz': b'not a NIfTI'},
        ['01', '02'],
    )
    capsys.readouterr()
    # two processes: the pool's path, and its error reporting
    arguments = ['simulate-ct', str(root), '--condition', 'standard:100', '--nprocs', '2']
    assert run_command(arguments) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if 'error' in line.lower()]
    assert any('sub-02_ct.nii.gz' in line for line in errors)
    written = nb.load(root / 'sub-01/anat/sub-01_rec-standard100_ct.nii.gz')
    assert written.shape == nb.load(good).shape
    assert not list(root.glob('sub-02/anat/*rec-*'))
    assert (root / 'sub-02/anat/sub-02_ct.nii.gz').read_bytes() == b'not a NIfTI'


def test_simulate_ct_refuses_a_bad_condition(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_command(['simulate-ct', str(tmp_path), '--condition', 'sharp:250'])
    assert exit_info.value.code == 2
    assert 'KERNEL:DOSE' in capsys.readouterr().err
