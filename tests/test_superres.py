"""The superres pipeline: the forward model, the noise estimates, the quality bars on real
heads and a real CT (thick slices simulated from them), the grids, and the command line."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import SHARED_DATA, run_cli, write_bids
from helpers.metrics import peak_signal_to_noise_ratio as psnr
from helpers.superres_simulation import spline_upsample, thick_slices
from mrctprep.imaging.similarity import structural_similarity as ssim
from mrctprep.imaging.superres.grids import OutputGrid, common_grid, scan_grid
from mrctprep.imaging.superres.noise import estimate_noise
from mrctprep.imaging.superres.operators import Projection, ScanGeometry, profile_taps
from mrctprep.imaging.superres.reconstruct import InputScan, SuperResSettings, super_resolve
from mrctprep.interfaces.superres import SuperResolution

MR = SHARED_DATA / 'mr'
CT = SHARED_DATA / 'ct' / 'totalseg_pulmonary_ct_cropped.nii.gz'


def _block(path, start, size=96) -> nb.Nifti1Image:
    """A size^3 block of a real image, with its world position kept."""
    img = nb.load(path)
    box = tuple(slice(s, s + size) for s in start)
    block = img.get_fdata(dtype=np.float32)[box]
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ [*start, 1])[:3]
    return nb.Nifti1Image(block, affine)


def _grid(img: nb.Nifti1Image) -> OutputGrid:
    return OutputGrid(img.shape, img.affine)


def _rotation(degrees) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler('xyz', degrees, degrees=True).as_matrix()
    return matrix


@pytest.fixture(autouse=True, scope='module')
def one_torch_thread():
    # Beside other test processes on two cores, two spinning OpenMP threads run the solver's
    # memory-bound loops twenty times slower than one thread does.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def colin_block() -> nb.Nifti1Image:
    return _block(MR / 'colin27_t1_head.nii.gz', (42, 50, 50))


# -- forward model ---------------------------------------------------------------------------


def test_slice_profiles_follow_uniress_supports_and_sum_to_one():
    gaussian = profile_taps('gaussian', 5.0)
    rect = profile_taps('rect', 5.0)
    assert len(gaussian) == 2 * int(4 * 5 / np.sqrt(8 * np.log(2)) + 1) + 1
    assert len(rect) == 2 * 3 + 1
    assert gaussian.sum() == pytest.approx(1) and rect.sum() == pytest.approx(1)
    # A 5-voxel rectangle integrated against the linear B-spline: flat 0.2 in the middle.
    assert rect[2:5] == pytest.approx([0.2, 0.2, 0.2])
    assert profile_taps('rect', 5.0 * (1 - 0.2))[3] == pytest.approx(0.25)


@pytest.mark.parametrize(
    'affine, shape, separable',
    [
        (np.diag([1.0, 1.0, 5.0, 1.0]), (30, 34, 7), True),
        (
            np.array([[0, 0, -4.0, 40.3], [1, 0, 0, 0.4], [0, 1.0, 0, -0.2], [0, 0, 0, 1]]),
            (34, 28, 10),
            True,
        ),
        (np.diag([0.86, 0.86, 2.4, 1.0]), (35, 40, 12), True),
        (_rotation([8, 4, -3]) @ np.diag([0.9, 0.9, 3.0, 1.0]), (32, 36, 10), False),
    ],
)
def test_adjoint_and_gram_are_exact(affine, shape, separable):
    output_shape = (32, 36, 30)
    projection = Projection(ScanGeometry(shape, affine, slice_gap=0.1), output_shape, np.eye(4))
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(output_shape, generator=generator, dtype=torch.float64).float()
    x = torch.randn(shape, generator=generator, dtype=torch.float64).float()
    forward = float((projection.forward(y).double() * x.double()).sum())
    adjoint = float((y.double() * projection.adjoint(x).double()).sum())
    assert projection.is_separable is separable
    assert forward == pytest.approx(adjoint, rel=1e-5)
    gram = projection.gram(y)
    assert torch.allclose(gram, projection.adjoint(projection.forward(y)), atol=1e-4)


@pytest.mark.parametrize('rotation', [[0, 0, 0], [6, -4, 3]])
def test_interleave_scale_multiplies_alternate_slices_and_keeps_the_adjoint_exact(rotation):
    output_shape = (32, 36, 30)
    affine = _rotation(rotation) @ np.diag([1.0, 1.0, 4.0, 1.0])
    projection = Projection(ScanGeometry((30, 34, 7), affine), output_shape, np.eye(4))
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(output_shape, generator=generator)
    x = torch.randn((30, 34, 7), generator=generator)
    plain = projection.forward(y)
    projection.set_interleave_scale(0.2)
    scaled = projection.forward(y)
    assert torch.allclose(scaled[:, :, 0::2], plain[:, :, 0::2] * np.exp(0.2), atol=1e-5)
    assert torch.allclose(scaled[:, :, 1::2], plain[:, :, 1::2] * np.exp(-0.2), atol=1e-5)
    forward = float((scaled.double() * x.double()).sum())
    assert forward == pytest.approx(float((y.double() * projection.adjoint(x)).sum()), rel=1e-5)
    gram = projection.gram(y)
    assert torch.allclose(gram, projection.adjoint(projection.forward(y)), atol=1e-4)
    assert projection.is_separable is (rotation == [0, 0, 0])


@pytest.mark.parametrize('rotation', [[0, 0, 0], [6, -4, 3]])
def test_forward_model_matches_scipy_resampling_and_convolution(rotation):
    # An independent A: trilinear sampling (scipy) on the intermediate grid, the profile as a
    # scipy convolution, every r-th sample; the scan lies inside the output grid.
    output_shape = (40, 40, 40)
    rng = np.random.default_rng(0)
    y = ndimage.gaussian_filter(rng.normal(size=output_shape), 2).astype(np.float32)
    scan_affine = _rotation(rotation) @ np.diag([1.0, 1.0, 4.0, 1.0])
    scan_affine[:3, 3] = [6.3, 5.6, 7.6]
    projection = Projection(ScanGeometry((28, 28, 6), scan_affine), output_shape, np.eye(4))
    ours = projection.forward(torch.as_tensor(y)).numpy()
    coordinates = np.indices(projection.intermediate_shape).reshape(3, -1)
    points = projection.transform[:3, :3] @ coordinates + projection.transform[:3, 3:]
    sampled = ndimage.map_coordinates(y, points, order=1).reshape(projection.intermediate_shape)
    taps = projection.profile.taps[2]
    convolved = ndimage.correlate1d(sampled, taps, axis=2, mode='constant')
    half = (len(taps) - 1) // 2
    reference = convolved[:, :, half::4][:, :, :6]
    assert projection.is_separable is (rotation == [0, 0, 0])
    assert np.abs(ours - reference).max() < 1e-4 * np.abs(y).max()


# -- noise and regularisation ----------------------------------------------------------------


def _rician(data: np.ndarray, sd: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    real = data + rng.normal(0, sd, data.shape)
    return np.hypot(real, rng.normal(0, sd, data.shape)).astype(np.float32)


def test_rician_mixture_finds_the_noise_of_a_real_head():
    img = nb.load(MR / 't1_head_2mm.nii.gz')
    noisy = _rician(img.get_fdata(), sd=12.0)
    estimate = estimate_noise(noisy, (2.0, 2.0, 2.0), modality='mr')
    assert estimate.method.startswith('Rician mixture')
    assert estimate.sd == pytest.approx(12.0, rel=0.15)
    # The contrast is the brain's distance from air, not from a tissue.
    assert 60 < estimate.mu < 200


def test_noise_estimate_without_air_falls_back_and_stays_right():
    img = nb.load(MR / 't1_head_2mm.nii.gz')
    noisy = _rician(img.get_fdata(), sd=12.0)[25:60, 35:70, 25:55]
    estimate = estimate_noise(noisy, (2.0, 2.0, 2.0), modality='mr')
    assert estimate.method.startswith('no air class')
    assert estimate.sd == pytest.approx(12.0, rel=0.25)


def test_gaussian_mixture_finds_air_in_a_real_ct_and_lungs_are_not_air():
    abdomen = nb.load(SHARED_DATA / 'ct' / 'totalseg_example_ct.nii.gz').get_fdata()
    estimate = estimate_noise(abdomen, (3.0, 3.0, 3.0), modality='ct')
    assert estimate.method.startswith('Gaussian mixture')
    assert 800 < estimate.mu < 1200 and 5 < estimate.sd < 60
    # The chest crop holds no air outside the body: its narrowest class is lung.
    chest = estimate_noise(nb.load(CT).get_fdata(), (1.5, 1.5, 1.5), modality='ct')
    assert chest.method.startswith('no air class')
    assert 5 < chest.sd < 60


# -- quality bars (thick slices simulated from real 1 mm images) ------------------------------


def _score(estimate, truth, mask):
    return round(psnr(estimate, truth, mask), 2), round(ssim(estimate, truth, mask), 3)


def test_single_scan_beats_cubic_spline_by_half_a_db(colin_block):
    truth = colin_block.get_fdata()
    mask = truth > 20
    scan = thick_slices(colin_block, 2, 5.0)
    [result] = super_resolve(
        [InputScan(scan, 'T1w', 'mr', 'axial')],
        SuperResSettings(max_iter=40),
        grid=_grid(colin_block),
    )
    ours = _score(result.image.get_fdata(), truth, mask)
    cubic = _score(spline_upsample(scan, truth.shape, colin_block.affine), truth, mask)
    print(f'single scan: ours {ours}, cubic {cubic}')
    assert ours[0] >= cubic[0] + 0.5
    assert ours[1] > cubic[1]
    assert result.metadata['Noise'][0]['SeparableOperator']
    assert np.allclose(result.image.affine, colin_block.affine)


def test_three_orthogonal_runs_beat_their_mean_cubic_by_6_db(colin_block):
    truth = colin_block.get_fdata()
    mask = truth > 20
    scans = [
        InputScan(thick_slices(colin_block, axis, 5.0), 'T1w', 'mr', f'run-{axis}')
        for axis in (2, 0, 1)
    ]
    [result] = super_resolve(scans, SuperResSettings(max_iter=60), grid=_grid(colin_block))
    ours = _score(result.image.get_fdata(), truth, mask)
    cubic = np.mean([spline_upsample(s.img, truth.shape, colin_block.affine) for s in scans], 0)
    mean_cubic = _score(cubic, truth, mask)
    print(f'three runs: ours {ours}, mean of cubic {mean_cubic}')
    assert ours[0] >= mean_cubic[0] + 6
    # Co-registration found the runs aligned, so every run kept the separable operator.
    assert all(r['RotationDegrees'] < 0.5 for r in result.metadata['Coregistration'])
    assert all(n['SeparableOperator'] for n in result.metadata['Noise'])


def test_joint_prior_beats_fitting_each_contrast_alone():
    start = (24, 40, 32)
    truths = {
        name: _block(MR / f'stroke_{name}_brain.nii.gz', start, size=72)
        for name in ('t1', 't2', 'flair')
    }
    scans = [
        InputScan(thick_slices(truths[name], axis, 5.0), name, 'mr', name)
        for name, axis in (('t1', 2), ('t2', 0), ('flair', 1))
    ]
    grid = _grid(truths['t1'])
    settings = SuperResSettings(max_iter=40, coregister=False)
    joint = super_resolve(scans, settings, grid=grid)
    gains = []
    for scan, result in zip(scans, joint, strict=True):
        truth = truths[scan.channel].get_fdata()
        mask = truth > 0
        [alone] = super_resolve([scan], settings, grid=grid)
        joint_psnr = psnr(result.image.get_fdata(), truth, mask)
        gains.append(joint_psnr - psnr(alone.image.get_fdata(), truth, mask))
    print(f'joint minus separate PSNR (t1, t2, flair): {np.round(gains, 2)}')
    assert min(gains) > 0
    assert np.mean(gains) > 0.3


def test_ct_keeps_hounsfield_units_and_beats_cubic_spline():
    ct = nb.load(CT)
    truth_img = nb.Nifti1Image(
        ct.get_fdata(dtype=np.float32)[10:106, 4:100, 8:104],
        ct.affine @ np.array([[1, 0, 0, 10], [0, 1, 0, 4], [0, 0, 1, 8], [0, 0, 0, 1.0]]),
    )
    truth = truth_img.get_fdata()
    scan = thick_slices(truth_img, 2, 6.0)
    [result] = super_resolve(
        [InputScan(scan, 'ct', 'ct', 'ct')],
        SuperResSettings(max_iter=40, voxel_size=1.5),
        grid=_grid(truth_img),
    )
    ours = result.image.get_fdata()
    # Scored where the scan sees: up to half a slice beyond its last slice centre.
    body = truth > -900
    body[:, :, (scan.shape[2] - 1) * 4 + 3 :] = False
    soft_tissue = ndimage.binary_erosion((truth > 0) & (truth < 100), iterations=1) & body
    cubic = spline_upsample(scan, truth.shape, truth_img.affine)
    hu_error = abs(ours[soft_tissue].mean() - truth[soft_tissue].mean())
    print(
        f'CT: ours {_score(ours, truth, body)}, cubic {_score(cubic, truth, body)}, '
        f'soft-tissue mean HU error {hu_error:.2f}'
    )
    assert hu_error < 5
    assert psnr(ours, truth, body) >= psnr(cubic, truth, body) + 0.5
    assert ours.min() >= scan.get_fdata().min() and ours.max() <= scan.get_fdata().max()


def _interleaved(img: nb.Nifti1Image, scale: float) -> nb.Nifti1Image:
    """``img`` with slices 0, 2, 4... of its last axis times e^scale, the others e^-scale."""
    data = img.get_fdata(dtype=np.float32)
    data[:, :, 0::2] *= np.exp(scale)
    data[:, :, 1::2] *= np.exp(-scale)
    return nb.Nifti1Image(data, img.affine)


def test_interleaved_slice_correction_finds_the_scale_and_removes_the_stripes(colin_block):
    truth = colin_block.get_fdata()
    mask = truth > 20
    # With noise: fitted to a noise-free scan (noise estimate ~0), the data term alone holds
    # y to the stripes and one scan cannot tell them from anatomy.
    striped = _interleaved(thick_slices(colin_block, 2, 5.0), 0.15)
    noisy = nb.Nifti1Image(_rician(striped.get_fdata(), 5.0), striped.affine)
    scan = InputScan(noisy, 'T1w', 'mr', 'interleaved')
    results = {
        interleaved: super_resolve(
            [scan], SuperResSettings(max_iter=40, interleaved=interleaved), grid=_grid(colin_block)
        )[0]
        for interleaved in (False, True)
    }
    scale = results[True].metadata['Noise'][0]['InterleaveScale']
    without, corrected = (psnr(results[k].image.get_fdata(), truth, mask) for k in (False, True))
    print(f'interleaved: s {scale:.4f}, PSNR without {without:.2f}, with {corrected:.2f}')
    assert scale == pytest.approx(0.15, abs=0.03)
    # Measured: s 0.153, PSNR 20.97 without, 27.09 with (27.19 for the scan without stripes).
    assert corrected >= without + 5
    assert 'InterleaveScale' not in results[False].metadata['Noise'][0]
    assert results[True].metadata['Noise'][0]['SeparableOperator']


def test_interleaved_slice_correction_leaves_ct_alone():
    truth_img = _block(CT, (10, 4, 8), size=64)
    scan = InputScan(_interleaved(thick_slices(truth_img, 2, 6.0), 0.15), 'ct', 'ct', 'ct')
    results = [
        super_resolve(
            [scan], SuperResSettings(max_iter=5, interleaved=interleaved), grid=_grid(truth_img)
        )[0]
        for interleaved in (False, True)
    ]
    assert 'InterleaveScale' not in results[1].metadata['Noise'][0]
    assert np.array_equal(results[0].image.get_fdata(), results[1].image.get_fdata())


def test_a_crop_without_air_is_not_over_smoothed():
    # A block inside the brain: no background class; UniRes's estimate collapsed here.
    truth_img = _block(MR / 'colin27_t1_head.nii.gz', (60, 80, 60), size=64)
    truth = truth_img.get_fdata()
    assert truth.min() > 20
    scan = thick_slices(truth_img, 2, 5.0)
    [result] = super_resolve(
        [InputScan(scan, 'T1w', 'mr', 'crop')],
        SuperResSettings(max_iter=40),
        grid=_grid(truth_img),
    )
    mask = np.ones(truth.shape, bool)
    ours = psnr(result.image.get_fdata(), truth, mask)
    linear = psnr(spline_upsample(scan, truth.shape, truth_img.affine, order=1), truth, mask)
    cubic = psnr(spline_upsample(scan, truth.shape, truth_img.affine), truth, mask)
    print(f'crop without air: ours {ours:.2f}, trilinear {linear:.2f}, cubic {cubic:.2f}')
    assert result.metadata['Noise'][0]['NoiseMethod'].startswith('no air class')
    assert ours >= cubic + 0.5


# -- grids and the linear method ---------------------------------------------------------------


def test_scan_grid_keeps_the_first_scans_lattice_and_covers_every_scan(colin_block):
    scans = [thick_slices(colin_block, 2, 5.0, offset=2), thick_slices(colin_block, 0, 4.0)]
    grid = scan_grid([(s.shape, s.affine) for s in scans], 1.0)
    shift = np.linalg.inv(colin_block.affine) @ grid.affine
    assert np.allclose(shift[:3, :3], np.eye(3))
    assert np.allclose(shift[:3, 3], np.round(shift[:3, 3]))
    assert grid.voxel_size == pytest.approx((1, 1, 1))
    for scan in scans:
        corners = np.linalg.inv(grid.affine) @ scan.affine @ [*(np.array(scan.shape) - 1), 1]
        assert np.all(corners[:3] <= np.array(grid.shape) - 1 + 1e-6)


def test_common_grid_has_cnn_friendly_sizes_around_the_template():
    template = nb.load(SHARED_DATA / 'templates' / 'MNI152_T1_1mm_brain.nii.gz')
    grid = common_grid(template, np.eye(4), 1.0)
    assert grid.shape == (192, 256, 192)
    centre = grid.affine @ [*((np.array(grid.shape) - 1) / 2), 1]
    template_centre = template.affine @ [*((np.array(template.shape) - 1) / 2), 1]
    assert np.allclose(centre, template_centre)
    assert common_grid(template, np.eye(4), 2.0).shape == (96, 128, 96)


def test_linear_method_is_the_averaged_trilinear_reslice(colin_block):
    truth = colin_block.get_fdata()
    scans = [
        InputScan(thick_slices(colin_block, axis, 4.0), 'T1w', 'mr', f'run-{axis}')
        for axis in (2, 0)
    ]
    [result] = super_resolve(
        scans, SuperResSettings(method='linear', coregister=False), grid=_grid(colin_block)
    )
    expected = np.mean(
        [spline_upsample(s.img, truth.shape, colin_block.affine, order=1) for s in scans], axis=0
    )
    inner = (slice(3, -3),) * 3
    assert np.abs(result.image.get_fdata() - expected)[inner].max() < 1e-3
    assert 'Iterations' not in result.metadata


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_gives_the_cpu_result(colin_block):
    scan = InputScan(thick_slices(colin_block, 2, 5.0), 'T1w', 'mr', 'axial')
    results = {
        device: super_resolve(
            [scan], SuperResSettings(max_iter=10, device=device), grid=_grid(colin_block)
        )[0].image.get_fdata()
        for device in ('cpu', 'cuda')
    }
    assert np.abs(results['cpu'] - results['cuda']).max() < 0.05 * np.abs(results['cpu']).max()


# -- nipype interface and command line -------------------------------------------------------


def test_an_unusable_input_is_named(tmp_path):
    empty = tmp_path / 'sub-01_T2w.nii.gz'
    nb.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)).to_filename(empty)
    node = SuperResolution(in_files=[str(empty)], channels=['T2w'])
    with pytest.raises(ValueError, match=f'{empty}: every voxel is 0'):
        node.run(cwd=str(tmp_path))


def _halved(path) -> nb.Nifti1Image:
    """A real 1 mm image averaged over 2 x 2 x 2 blocks: a small 2 mm image of the same head."""
    img = nb.load(path)
    data = img.get_fdata(dtype=np.float32)
    shape = np.array(data.shape) // 2
    data = data[: 2 * shape[0], : 2 * shape[1], : 2 * shape[2]]
    halved = data.reshape(shape[0], 2, shape[1], 2, shape[2], 2).mean(axis=(1, 3, 5))
    affine = img.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (img.affine @ [0.5, 0.5, 0.5, 1])[:3]
    return nb.Nifti1Image(halved, affine)


def test_cli_super_resolves_two_runs_and_a_second_contrast(tmp_path):
    t1, t2 = _halved(MR / 'stroke_t1_brain.nii.gz'), _halved(MR / 'stroke_t2_brain.nii.gz')
    scans = {
        'sub-01/anat/sub-01_run-1_T1w.nii.gz': thick_slices(t1, 2, 6.0),
        'sub-01/anat/sub-01_run-2_T1w.nii.gz': thick_slices(t1, 0, 6.0),
        'sub-01/anat/sub-01_T2w.nii.gz': thick_slices(t2, 1, 6.0),
    }
    sources = tmp_path / 'sources'
    sources.mkdir()
    files = {}
    for relative, img in scans.items():
        path = sources / relative.rsplit('/', 1)[-1]
        img.to_filename(path)
        files[relative] = path
    bids = write_bids(tmp_path / 'bids', files, participants=['01'])
    out = tmp_path / 'out'
    result = run_cli(
        bids,
        out,
        'participant',
        '--pipelines',
        'superres',
        '-w',
        tmp_path / 'work',
        '--superres-voxel-size',
        '2',
        '--superres-max-iter',
        '12',
        '--device',
        'cpu',
        '--nprocs',
        '1',
        '--omp-nthreads',
        '1',
    )
    assert result.returncode == 0, result.stderr
    anat = out / 'sub-01' / 'anat'
    written = sorted(p.name for p in anat.iterdir())
    assert written == [
        'sub-01_res-2_desc-superres_T1w.json',
        'sub-01_res-2_desc-superres_T1w.nii.gz',
        'sub-01_res-2_desc-superres_T2w.json',
        'sub-01_res-2_desc-superres_T2w.nii.gz',
    ]
    assert (out / 'sub-01' / 'figures' / 'sub-01_desc-superres_T1w.svg').is_file()
    t1_out = nb.load(anat / 'sub-01_res-2_desc-superres_T1w.nii.gz')
    t2_out = nb.load(anat / 'sub-01_res-2_desc-superres_T2w.nii.gz')
    assert t1_out.get_data_dtype() == np.float32
    assert t1_out.header.get_zooms() == pytest.approx((2, 2, 2))
    assert np.allclose(t1_out.affine, t2_out.affine) and t1_out.shape == t2_out.shape
    # The grid takes the first run's axes (oblique, RAS+) and covers its voxel centres.
    first = scans['sub-01/anat/sub-01_run-1_T1w.nii.gz']
    assert np.allclose(t1_out.affine[:3, :3], t1.affine[:3, :3], atol=1e-4)
    in_grid = np.linalg.inv(t1_out.affine) @ first.affine @ [*(np.array(first.shape) - 1), 1]
    assert np.all(in_grid[:3] > -0.01) and np.all(in_grid[:3] < np.array(t1_out.shape) - 0.99)
    sidecar = json.loads((anat / 'sub-01_res-2_desc-superres_T1w.json').read_text())
    assert sidecar['Resolution'].startswith('2 mm isotropic')
    assert sidecar['Sources'] == [
        'bids:raw:sub-01/anat/sub-01_run-1_T1w.nii.gz',
        'bids:raw:sub-01/anat/sub-01_run-2_T1w.nii.gz',
    ]
    assert len(sidecar['Noise']) == 2 and sidecar['Lambda'] > 0
    assert sidecar['Iterations'] == 12 and sidecar['Converged'] is False
    assert sidecar['Channels'] == ['T1w', 'T2w'] and len(sidecar['Coregistration']) == 2
    assert all(r['RotationDegrees'] < 1 for r in sidecar['Coregistration'])
