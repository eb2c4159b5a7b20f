"""Model infrastructure: weights resolution and checks, tiled inference, IGUANe's networks and
training loop (exact resume, age-matched sampling, augmentation)."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli
from mrctprep.cli.errors import EXIT_RESOURCE, describe_error, exit_code_of
from mrctprep.cli.main import run as parse_args
from mrctprep.core.devices import fast_precision
from mrctprep.core.errors import ResourceError
from mrctprep.models.iguane import (
    IguaneDiscriminator,
    IguaneGenerator,
    MeanAbsoluteDeviationNorm,
    from_network_space,
    harmonize_volume,
    to_network_space,
)
from mrctprep.models.iguane_training import (
    BACKGROUND,
    IguaneTraining,
    IguaneTrainingSettings,
    PairSampler,
    TrainingImage,
    age_bin_probabilities,
    augment,
    load_network_space,
    random_patch,
)
from mrctprep.models.inference import predict_in_tiles, predict_whole_or_tiled
from mrctprep.models.training import TrainingSettings, run_training, write_training_log
from mrctprep.models.weights import (
    WEIGHTS_DIR_ENV,
    bundled_card,
    resolve_weights,
    save_weights,
    trained_weights_file,
)


@pytest.fixture
def isolated_weights(tmp_path, monkeypatch):
    """No weights anywhere: an empty user cache and no weights directory."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    return tmp_path


def _small_generator_weights(path, seed=0):
    torch.manual_seed(seed)
    return save_weights(
        IguaneGenerator().state_dict(), path, name='iguane', provenance={'trained': {'Steps': 0}}
    )


# --- weights -----------------------------------------------------------------------------


def test_saved_weights_carry_the_bundled_card_and_their_sha256(isolated_weights):
    weights = _small_generator_weights(isolated_weights / 'w' / 'iguane.pt')
    card = json.loads((isolated_weights / 'w' / 'iguane.json').read_text())
    assert card['sha256'] == weights.sha256 and len(card['sha256']) == 64
    assert card['architecture'] == bundled_card('iguane')['architecture']
    assert card['architecture']['generator_parameters'] == sum(
        p.numel() for p in IguaneGenerator().parameters()
    )
    assert card['trained'] == {'Steps': 0}
    state = resolve_weights('iguane', explicit=weights.path).load_state_dict()
    assert state.keys() == IguaneGenerator().state_dict().keys()


@pytest.mark.parametrize(
    ('trained', 'patch_size'),
    [
        ({'PatchSize': [32, 48, 32]}, (32, 48, 32)),
        ({'PatchSize': 'whole volume'}, None),
        ({}, None),
    ],
)
def test_weights_know_the_crop_size_they_were_trained_on(isolated_weights, trained, patch_size):
    torch.manual_seed(0)
    weights = save_weights(
        IguaneGenerator().state_dict(),
        isolated_weights / 'iguane.pt',
        name='iguane',
        provenance={'trained': trained},
    )
    assert resolve_weights('iguane', explicit=weights.path).trained_patch_size == patch_size


def test_weights_are_found_in_order_output_dir_then_env_then_cache(isolated_weights, monkeypatch):
    root = isolated_weights
    cached = _small_generator_weights(root / 'cache' / 'mrctprep' / 'weights' / 'iguane.pt')
    assert resolve_weights('iguane', output_dir=root / 'out').path == cached.path
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(root / 'env'))
    in_env = _small_generator_weights(root / 'env' / 'iguane.pt')
    assert resolve_weights('iguane', output_dir=root / 'out').path == in_env.path
    trained = _small_generator_weights(trained_weights_file(root / 'out', 'iguane'))
    assert resolve_weights('iguane', output_dir=root / 'out').path == trained.path
    explicit = _small_generator_weights(root / 'mine' / 'iguane.pt')
    found = resolve_weights('iguane', explicit=explicit.path, output_dir=root / 'out')
    assert found.path == explicit.path


def test_missing_weights_say_where_they_were_expected_and_how_to_train(isolated_weights):
    with pytest.raises(ResourceError) as error:
        resolve_weights('iguane', output_dir=isolated_weights / 'out')
    message = describe_error(error.value)  # the facts, and the options the command line adds
    assert str(isolated_weights / 'out' / 'models' / 'iguane' / 'iguane.pt') in message
    assert str(isolated_weights / 'cache' / 'mrctprep' / 'weights' / 'iguane.pt') in message
    assert 'group --train iguane' in message and '\n' not in message
    assert exit_code_of(error.value) == EXIT_RESOURCE == 126


def test_corrupt_or_card_less_weights_are_refused(isolated_weights):
    weights = _small_generator_weights(isolated_weights / 'iguane.pt')
    with weights.path.open('r+b') as stream:  # one flipped byte
        stream.seek(1000)
        byte = stream.read(1)
        stream.seek(1000)
        stream.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ResourceError, match='corrupt or changed weights'):
        resolve_weights('iguane', explicit=weights.path)
    (isolated_weights / 'iguane.json').unlink()
    with pytest.raises(ResourceError, match='without their model card'):
        resolve_weights('iguane', explicit=weights.path)


def test_mr_harmonize_without_weights_exits_126_before_running(mini_bids, isolated_weights):
    result = run_cli(
        mini_bids,
        isolated_weights / 'out',
        'participant',
        '-w',
        isolated_weights / 'work',
        '--pipelines',
        'mr-harmonize',
        env={'XDG_CACHE_HOME': str(isolated_weights / 'cache')},
    )
    assert result.returncode == 126, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if 'error' in line]
    assert len(error_lines) == 1 and 'group --train iguane' in error_lines[0]
    assert not (isolated_weights / 'out' / 'sub-01').exists()


# --- networks ------------------------------------------------------------------------------


def test_mean_absolute_deviation_norm_matches_its_definition():
    torch.manual_seed(1)
    norm = MeanAbsoluteDeviationNorm(3)
    with torch.no_grad():
        norm.scale.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.offset.copy_(torch.tensor([0.0, -1.0, 3.0]))
    x = torch.randn(2, 3, 4, 5, 6) * 3 + 7
    expected = np.empty(x.shape, np.float32)
    for n in range(2):
        for c in range(3):
            values = x[n, c].numpy()
            centred = values - values.mean()
            deviation = np.abs(centred).mean()
            scale, offset = norm.scale[c].item(), norm.offset[c].item()
            expected[n, c] = scale * centred / (deviation + 1e-3) + offset
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_generator_is_residual_and_discriminator_maps_to_iguane_patches():
    generator = IguaneGenerator()
    with torch.no_grad():
        generator.head.weight.zero_()
        generator.head.bias.zero_()
        x = torch.randn(1, 1, 32, 48, 32)
        assert torch.equal(generator(x), x)  # tanh(0) + input
        patches = IguaneDiscriminator()(torch.zeros(1, 1, 160, 192, 160))
    assert patches.shape == (1, 1, 20, 24, 20)
    with pytest.raises(ValueError, match='divisible by 16'):
        generator(torch.zeros(1, 1, 40, 48, 32))


def test_network_space_round_trip_and_background():
    data = np.zeros((6, 6, 6), np.float32)
    data[1:5, 1:5, 1:5] = np.linspace(100, 900, 64).reshape(4, 4, 4)
    network_input, mask = to_network_space(data)
    assert network_input[0, 0, 0] == 0 and mask.sum() == 64
    np.testing.assert_allclose(network_input[mask], data[mask] / 500 - 1, rtol=1e-6)
    np.testing.assert_allclose(from_network_space(network_input, mask), data, rtol=1e-5)
    negative = from_network_space(np.full(data.shape, -3.0, np.float32), mask)
    assert negative.min() == 0


def test_harmonize_volume_with_an_identity_generator_returns_the_input():
    generator = IguaneGenerator().eval()
    with torch.no_grad():
        generator.head.weight.zero_()
        generator.head.bias.zero_()
    data = np.zeros((20, 36, 20), np.float32)  # not multiples of 16: padded and cropped back
    data[4:16, 6:30, 4:16] = 500 + 100 * np.random.default_rng(0).standard_normal((12, 24, 12))
    np.testing.assert_allclose(harmonize_volume(data, generator, 'cpu'), data, atol=1e-3)


class _CountingGenerator(nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator, self.calls = generator, 0

    def forward(self, x):
        self.calls += 1
        return self.generator(x)


def test_a_crop_trained_generator_runs_in_crops_of_its_training_size():
    """Its instance norms learnt the statistics of crops, which a whole volume, half of it
    background, does not have: the same weights give another image on the whole volume."""
    torch.manual_seed(0)
    generator = _CountingGenerator(IguaneGenerator().eval())
    data = np.zeros((48, 64, 48), np.float32)
    data[8:30, 10:40, 8:30] = 500 + 100 * np.random.default_rng(0).standard_normal((22, 30, 22))
    tile = (16, 16, 16)
    result = harmonize_volume(data, generator, 'cpu', tile=tile)

    network_input, brain = to_network_space(data)
    volume = torch.from_numpy(network_input)[None, None]
    with torch.no_grad(), fast_precision('cpu'):
        every_crop = predict_in_tiles(generator.generator, volume, tile=tile, overlap=0.5)
    expected = from_network_space(every_crop[0, 0].float().numpy(), brain)
    np.testing.assert_allclose(result[brain], expected[brain], rtol=1e-4, atol=1e-2)
    assert np.all(result[~brain] == 0)
    all_crops = 5 * 7 * 5  # starts every 8 voxels
    assert 0 < generator.calls < all_crops  # crops without brain are not run
    whole = harmonize_volume(data, generator.generator, 'cpu')
    assert np.abs(whole - result)[brain].mean() > 10


# --- tiled inference -------------------------------------------------------------------------


def _local_network():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 3, padding=1))


def test_tiles_blend_back_to_the_whole_volume_result():
    network = _local_network()
    volume = torch.randn(1, 1, 40, 56, 48)
    with torch.no_grad():
        whole = network(volume)
        tiled = predict_in_tiles(network, volume, tile=(24, 32, 24))
        batched = predict_in_tiles(network, volume, tile=(24, 32, 24), tiles_per_call=5)
    difference = (tiled - whole).abs()  # only where a tile edge's missing context shows
    assert difference.max() < 0.05 * whole.abs().max() and difference.mean() < 1e-3
    torch.testing.assert_close(batched, tiled)


def test_out_of_memory_falls_back_to_tiles_never_to_a_crop(caplog):
    network = _local_network()
    volume = torch.randn(1, 1, 64, 64, 64)
    sizes = []

    def predict(batch):
        sizes.append(tuple(batch.shape[2:]))
        if batch.shape[2:].numel() > 40**3:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return network(batch)

    with torch.no_grad():
        result = predict_whole_or_tiled(predict, volume, multiple=16, min_tile=16)
        whole = network(volume)
    assert sizes[0] == (64, 64, 64) and (32, 32, 32) in sizes
    assert result.shape == whole.shape
    assert (result - whole).abs().mean() < 1e-3
    assert 'does not fit in memory' in caplog.text


# --- training -----------------------------------------------------------------------------


def test_age_bins_give_both_sides_one_distribution():
    reference, source = np.array([10, 30, 5, 0]), np.array([2, 8, 20, 4])
    probabilities = age_bin_probabilities(reference, source)
    assert probabilities.sum() == pytest.approx(1.0)
    assert probabilities[3] == 0  # no reference image of that age: never drawn
    assert np.all(probabilities >= 0)
    images = [TrainingImage(path=f'r{i}', site='A', age=a) for i, a in enumerate([21, 25, 52])]
    sources = [TrainingImage(path=f's{i}', site='B', age=a) for i, a in enumerate([23, 55, 71])]
    sampler = PairSampler(images, sources, age_matched=True)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ref, src = sampler.draw(rng)
        assert ref.age // 10 == src.age // 10  # the 70s have no reference: never drawn


def test_augmentation_moves_the_volume_and_fills_with_the_background_sentinel():
    volume = np.full((40, 40, 40), BACKGROUND, np.float32)
    volume[8:32, 8:32, 8:32] = 0.25
    rotated = shifted = 0
    for seed in range(12):
        out = augment(volume, np.random.default_rng(seed))
        assert out.shape == volume.shape
        assert np.all(out[:3, :3, :3] == BACKGROUND)  # corners: background, filled with -1
        assert abs(out[15:25, 15:25, 15:25].mean() - 0.25) < 0.02  # the object stays itself
        changed = out != volume
        moved_only = np.isin(out, [BACKGROUND, 0.25]).all()
        rotated += changed.any() and not moved_only
        shifted += changed.any()
    assert rotated and shifted > rotated  # p = 0.5 rotations; shifts nearly always
    patch = random_patch(volume, (16, 16, 16), np.random.default_rng(0))
    assert patch.shape == (16, 16, 16) and (patch > BACKGROUND).mean() > 0.4  # around brain


def _synthetic_sites(tmp_path):
    """Two sites, two 'heads' each: site B's contrast is a power of site A's."""
    rng = np.random.default_rng(0)
    grid = np.indices((32, 48, 32)).astype(np.float32)
    images = []
    for site, power in (('A', 1.0), ('B', 1.4)):
        for head in range(2):
            inside = (
                (grid[0] - 16) ** 2 / 14**2
                + (grid[1] - 24) ** 2 / 21**2
                + (grid[2] - 16) ** 2 / 14**2
            ) < 1
            tissue = 1 + 0.4 * np.sin(grid[0] / (3 + head)) * np.cos(grid[1] / 4)
            data = np.where(inside, 500 * tissue**power + rng.normal(0, 5, grid.shape[1:]), 0)
            path = tmp_path / f'{site}{head}.nii.gz'
            nb.Nifti1Image(data.astype(np.float32), np.eye(4)).to_filename(path)
            images.append(TrainingImage(path=path, site=site, age=30.0 + 20 * head))
    return images


def _training(tmp_path, steps):
    images = _synthetic_sites(tmp_path)
    settings = IguaneTrainingSettings(steps=steps, patch_size=(16, 16, 16), seed=7)
    torch.manual_seed(7)
    return IguaneTraining(images[:2], {'B': images[2:]}, settings)


def test_training_resumes_exactly_where_it_stopped(tmp_path):
    straight = _training(tmp_path, steps=2)
    history = run_training(straight, TrainingSettings('iguane', 2, tmp_path / 'a.pt', 1))
    interrupted = _training(tmp_path, steps=2)
    run_training(interrupted, TrainingSettings('iguane', 1, tmp_path / 'b.pt', 1))
    resumed = _training(tmp_path, steps=2)
    resumed_history = run_training(
        resumed, TrainingSettings('iguane', 2, tmp_path / 'b.pt', 1, resume=True)
    )
    assert [row['step'] for row in resumed_history] == [1, 2]
    assert resumed_history == history
    for name, value in straight.generator.state_dict().items():
        assert torch.equal(value, resumed.generator.state_dict()[name]), name
    assert straight.optimisers['generator'][1].get_last_lr() == pytest.approx([2e-5])
    # one source site: 2 generator updates of 2, decayed linearly from 2e-4 to 2e-5

    write_training_log(history, tmp_path / 'log.tsv', tmp_path / 'loss.png')
    rows = (tmp_path / 'log.tsv').read_text().splitlines()
    assert rows[0].split('\t')[:3] == ['step', 'loss_disc_reference', 'loss_disc_source']
    assert len(rows) == 3
    assert (tmp_path / 'loss.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_scaled_head_starts_the_generators_near_the_identity(tmp_path):
    """Upstream's Glorot head starts a generator adding a residual of tanh(N(0, ~1.7)), about
    +-0.7 (350 on the median-500 scale); a tenth of that head starts it far closer to its input,
    yet not at it: at exactly the identity the L1 terms' kink would hold it there."""
    images = _synthetic_sites(tmp_path)
    volume = load_network_space(images[0].path)
    residuals = {}
    for scale in (1.0, 0.1):
        settings = IguaneTrainingSettings(steps=1, patch_size=(16,) * 3, seed=7, head_scale=scale)
        torch.manual_seed(7)
        task = IguaneTraining(images[:2], {'B': images[2:]}, settings)
        batch = task._masked_batch([volume])
        brain = batch.masks.bool()
        with torch.no_grad():
            residuals[scale] = [
                (generator(batch.images) - batch.images)[brain].abs().mean().item()
                for generator in (task.generator, task.backward['site0'])
            ]
    for upstream, scaled in zip(residuals[1.0], residuals[0.1], strict=True):
        assert upstream > 0.4 and 0.01 < scaled < 0.3 * upstream, (upstream, scaled)


def test_resume_refuses_a_checkpoint_of_other_data(tmp_path):
    checkpoint = tmp_path / 'checkpoint.pt'
    run_training(_training(tmp_path, 1), TrainingSettings('iguane', 1, checkpoint, 1, False, 'a'))
    with pytest.raises(Exception, match='other data or settings'):
        run_training(
            _training(tmp_path, 2), TrainingSettings('iguane', 2, checkpoint, 1, True, 'b')
        )


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        (['participant', '--train', 'iguane'], '--train runs at the group level'),
        (['group', '--steps', '10'], 'go with --train NAME'),
        (['group', '--train', 'iguane', '--train-patch-size', '40'], 'multiple of 16'),
        (['group', '--weights', 'iguane'], 'expected NAME=FILE'),
        (['group', '--weights', 'unet=w.pt'], 'unknown model'),
        (['group', '--iguane-head-scale', '0.1'], '--iguane-head-scale goes with --train iguane'),
    ],
)
def test_training_and_weights_options_are_checked_before_any_work(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([str(tmp_path / 'bids'), str(tmp_path / 'out'), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
