"""The sim2real CycleGAN: upstream's networks and checkpoints, radiograph reading, training
(exact resume, validation panels, best-generator choice) and the drr pipeline's sim2real step."""

from __future__ import annotations

import json
import logging

import nibabel as nb
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import SHARED_DATA, run_cli, write_bids
from mrctprep.cli.main import run as parse_args
from mrctprep.core.errors import ResourceError
from mrctprep.imaging.radiographs import (
    gradient_correlation,
    histogram_wasserstein,
    iter_radiographs,
    spectrum_distance,
)
from mrctprep.models import cyclegan
from mrctprep.models.cyclegan import (
    NLayerDiscriminator,
    ResnetGenerator,
    count_parameters,
    load_generator,
    translate,
)
from mrctprep.models.cyclegan_training import CycleGANSettings, CycleGANTraining, prepare
from mrctprep.models.training import TrainingSettings, run_training
from mrctprep.models.weights import WEIGHTS_DIR_ENV, bundled_card, sha256_of

TINY = {'ngf': 4, 'blocks': 2}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread, as the CLI's default --omp-nthreads: small convolutions on a busy machine
    run many times slower with more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _upstream_generator_shapes(ngf: int = 64, blocks: int = 9) -> dict[str, tuple[int, ...]]:
    """pytorch-CycleGAN-and-pix2pix's ``resnet_9blocks`` state dict, 1 channel, as its
    ``nn.Sequential`` numbers the layers (pads, norms and ReLUs take indices too)."""
    shapes: dict[str, tuple[int, ...]] = {'model.1.weight': (ngf, 1, 7, 7), 'model.1.bias': (ngf,)}
    shapes |= {'model.4.weight': (2 * ngf, ngf, 3, 3), 'model.4.bias': (2 * ngf,)}
    shapes |= {'model.7.weight': (4 * ngf, 2 * ngf, 3, 3), 'model.7.bias': (4 * ngf,)}
    for block in range(10, 10 + blocks):
        for conv in (1, 5):
            shapes[f'model.{block}.conv_block.{conv}.weight'] = (4 * ngf, 4 * ngf, 3, 3)
            shapes[f'model.{block}.conv_block.{conv}.bias'] = (4 * ngf,)
    up = 10 + blocks
    shapes |= {f'model.{up}.weight': (4 * ngf, 2 * ngf, 3, 3), f'model.{up}.bias': (2 * ngf,)}
    shapes |= {f'model.{up + 3}.weight': (2 * ngf, ngf, 3, 3), f'model.{up + 3}.bias': (ngf,)}
    shapes |= {f'model.{up + 7}.weight': (1, ngf, 7, 7), f'model.{up + 7}.bias': (1,)}
    return shapes


def _old_instance_norm_keys(blocks: int = 9) -> list[str]:
    """The norm layers' positions: running statistics that checkpoints from PyTorch < 0.4
    carry for InstanceNorm layers that keep none."""
    up = 10 + blocks
    norms = ['model.2', 'model.5', 'model.8', f'model.{up + 1}', f'model.{up + 4}']
    norms += [f'model.{b}.conv_block.{n}' for b in range(10, 10 + blocks) for n in (2, 6)]
    return [f'{n}.{stat}' for n in norms for stat in ('running_mean', 'running_var')]


def test_networks_have_upstreams_parameter_counts_and_key_names():
    generator = ResnetGenerator()
    assert count_parameters(generator) == 11_365_633  # 1 channel, ngf 64, 9 blocks
    # upstream prints 11.378 M (G) and 2.765 M (D) for its RGB default
    assert round(count_parameters(ResnetGenerator(3, 3)) / 1e6, 3) == 11.378
    assert round(count_parameters(NLayerDiscriminator(3)) / 1e6, 3) == 2.765
    shapes = {key: tuple(value.shape) for key, value in generator.state_dict().items()}
    assert shapes == _upstream_generator_shapes()
    discriminator = {k: tuple(v.shape) for k, v in NLayerDiscriminator().state_dict().items()}
    assert discriminator['model.8.weight'] == (512, 256, 4, 4)
    assert discriminator['model.11.weight'] == (1, 512, 4, 4)
    assert bundled_card('sim2real')['architecture']['generator_parameters'] == 11_365_633
    with torch.no_grad():  # 70x70 PatchGAN: 62x62 patches of a 512 image, 30x30 of 256
        assert NLayerDiscriminator(ndf=4)(torch.zeros(1, 1, 256, 256)).shape[-2:] == (30, 30)


def test_an_upstream_checkpoint_with_old_instance_norm_keys_loads_as_it_is(tmp_path):
    """latest_net_G_A.pth as upstream saves it: its key names, plus the running statistics of
    a pre-0.4 checkpoint. All weights zero but the last bias: the output is tanh(bias)."""
    state = {key: torch.zeros(shape) for key, shape in _upstream_generator_shapes().items()}
    state['model.26.bias'] = torch.tensor([0.5])
    for key in _old_instance_norm_keys():
        state[key] = torch.ones(state['model.1.bias'].shape[0] * 4)
    checkpoint = tmp_path / 'latest_net_G_A.pth'
    torch.save(state, checkpoint)
    generator = load_generator(checkpoint, sha256_of(checkpoint), 'cpu')
    assert count_parameters(generator) == 11_365_633
    mapped = translate(generator, np.random.default_rng(0).random((30, 42)))
    assert mapped.shape == (30, 42)
    assert mapped == pytest.approx((np.tanh(0.5) + 1) / 2, abs=1e-6)
    with pytest.raises(Exception, match='changed since'):
        load_generator(checkpoint, '0' * 64, 'cpu')
    state['model.99.weight'] = torch.zeros(1)  # a key upstream never writes: refused
    torch.save(state, checkpoint)
    with pytest.raises(ResourceError, match='not a CycleGAN.*model.99.weight'):
        load_generator(checkpoint, sha256_of(checkpoint), 'cpu')


def test_any_size_is_padded_and_cropped_back_and_large_images_are_tiled(monkeypatch):
    torch.manual_seed(0)
    generator = ResnetGenerator(**TINY).eval()
    image = np.random.default_rng(1).random((37, 53)).astype(np.float32)
    whole = translate(generator, image)
    assert whole.shape == (37, 53) and 0 <= whole.min() and whole.max() <= 1
    # a generator whose output is constant shows the tiles' blending weights sum to one
    for parameter in generator.parameters():
        torch.nn.init.zeros_(parameter)
    generator.model[-2].bias.data.fill_(-0.3)
    monkeypatch.setattr(cyclegan, 'MAX_TILE', 24)
    monkeypatch.setattr(cyclegan, 'TILE_OVERLAP', 8)
    tiled = translate(generator, image)
    assert tiled.shape == (37, 53)
    assert tiled == pytest.approx((np.tanh(-0.3) + 1) / 2, abs=1e-6)


def _dicom(path, pixels, photometric, **tags):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.1'  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality, ds.SOPClassUID = 'CR', meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_radiographs_are_read_as_displayed_and_bad_files_skipped_with_one_line(tmp_path, caplog):
    ramp = np.tile(np.linspace(0, 4000, 64), (32, 1))
    _dicom(tmp_path / 'a.dcm', ramp, 'MONOCHROME1', WindowCenter=2000, WindowWidth=2000)
    _dicom(tmp_path / 'b', ramp, 'MONOCHROME2', RescaleSlope=2, RescaleIntercept=-100)
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / 'c.png')  # 16-bit
    Image.fromarray((ramp / 16).astype(np.uint8)).convert('RGB').save(tmp_path / 'd.jpg')
    (tmp_path / 'e.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    _dicom(tmp_path / 'f.dcm', ramp, 'RGB')
    files = sorted(tmp_path.iterdir())
    with caplog.at_level(logging.WARNING):
        read = dict(iter_radiographs(files))
    assert [p.name for p in read] == ['a.dcm', 'b', 'c.png', 'd.jpg']
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 2 and 'e.png' in skipped[0] and 'photometric' in skipped[1]
    monochrome1, monochrome2, png, jpeg = read.values()
    # MONOCHROME1: high values are dark, so inverted; window 1000..3000 saturates both ends
    column = monochrome1[0]
    assert column[0] == 1.0 and column[-1] == 0.0
    assert column[np.argmin(np.abs(np.linspace(0, 4000, 64) - 2000))] == pytest.approx(
        0.5, abs=0.03
    )
    assert np.count_nonzero(column == 1.0) > 10 and np.count_nonzero(column == 0.0) > 10
    for linear in (monochrome2, png, jpeg):
        assert linear[0] == pytest.approx(np.linspace(0, 1, 64), abs=0.01)


def test_domain_distances_tell_alike_from_different_images():
    rng = np.random.default_rng(0)
    smooth = [np.clip(rng.normal(0.4, 0.1, (64, 64)), 0, 1).astype(np.float32) for _ in range(3)]
    same = [np.clip(rng.normal(0.4, 0.1, (64, 64)), 0, 1).astype(np.float32) for _ in range(3)]
    brighter = [np.clip(i + 0.3, 0, 1) for i in same]
    assert histogram_wasserstein(smooth, same) < 0.01
    assert histogram_wasserstein(smooth, brighter) == pytest.approx(0.3, abs=0.02)
    from scipy import ndimage

    blurred = [ndimage.gaussian_filter(i, 2) for i in same]
    assert spectrum_distance(smooth, same) < 0.1 < spectrum_distance(smooth, blurred)
    assert gradient_correlation(same[0], same[0] * 0.5 + 0.1) == pytest.approx(1.0)
    assert gradient_correlation(same[0], smooth[0]) < 0.2


def _training(tmp_path, steps, validation_every=2):
    rng = np.random.default_rng(0)
    a = [rng.random((40, 48)).astype(np.float32) for _ in range(3)]
    b = [np.clip(i * 0.5 + 0.4, 0, 1) for i in a]
    settings = CycleGANSettings(
        steps=steps, crop_size=32, load_size=36, validation_every=validation_every, ndf=4, **TINY
    )
    return CycleGANTraining(
        [prepare(image, settings) for image in a],
        [prepare(image, settings) for image in b],
        settings,
        validation=(a[:2], b[:2]),
        panel_dir=tmp_path / 'validation',
    )


def test_training_resumes_exactly_and_saves_validation_panels(tmp_path):
    straight = _training(tmp_path, steps=4)
    history = run_training(straight, TrainingSettings('cyclegan', 4, tmp_path / 'a.pt', 2))
    interrupted = _training(tmp_path, steps=4)
    run_training(interrupted, TrainingSettings('cyclegan', 3, tmp_path / 'b.pt', 3))
    resumed = _training(tmp_path, steps=4)
    resumed_history = run_training(
        resumed, TrainingSettings('cyclegan', 4, tmp_path / 'b.pt', 3, resume=True)
    )
    assert resumed_history == history
    assert set(history[0]) == {
        'step', 'G_A', 'G_B', 'cycle_A', 'cycle_B', 'idt_A', 'idt_B', 'D_A', 'D_B'
    }  # fmt: skip
    for mine, theirs in zip(straight.networks, resumed.networks, strict=True):
        for name, value in mine.state_dict().items():
            assert torch.equal(value, theirs.state_dict()[name]), name
    # constant for steps 1-2, then linearly down: 1 - (4 - 2) / 3 after the last step
    assert straight.schedules[0].get_last_lr() == pytest.approx([2e-4 / 3])
    assert len(straight.pools['A'].images) == 4
    panels = sorted((tmp_path / 'validation').iterdir())
    assert [p.name for p in panels] == [
        'validation_step-0000002.png',
        'validation_step-0000004.png',
    ]
    panel = np.asarray(Image.open(panels[-1]))
    assert panel.shape == (2 * (40 + 4), 3 * 48)  # rows: A | G_A(A) | G_B(G_A(A))
    # the kept generator is the one whose held-out images scored best
    assert straight.best['step'] in (2, 4) and straight.best['score'] > 0
    best = ResnetGenerator(**TINY)
    best.load_state_dict(straight.best['G_A'])
    mapped = [translate(best, image) for image in straight.validation[0]]
    assert histogram_wasserstein(mapped, straight.validation[1]) == pytest.approx(
        straight.best['score']
    )


def test_group_training_then_drr_sim2real_end_to_end(tmp_path):
    """group --train cyclegan on DRR and radiograph folders, then the drr pipeline applies the
    trained generator; without weights the same run exits 126 with one line."""
    rng = np.random.default_rng(0)
    drr_dir, real_dir = tmp_path / 'drrs', tmp_path / 'real'
    drr_dir.mkdir(), real_dir.mkdir()
    for n in range(10):  # the 10th of each held out for validation
        ramp = (
            np.outer(np.linspace(0, 1, 48), np.linspace(0.2, 1, 40)) + rng.random((48, 40)) * 0.1
        )
        Image.fromarray((ramp * 200).astype(np.uint8)).save(drr_dir / f'drr{n}.png')
        Image.fromarray((np.sqrt(ramp) * 60000).astype(np.uint16)).save(real_dir / f'cr{n}.png')
    (real_dir / 'notes.bin').write_bytes(b'not an image')
    ct = SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz'
    bids = write_bids(tmp_path / 'bids', {'sub-01/anat/sub-01_ct.nii.gz': ct}, ['01'])
    out, cache = tmp_path / 'out', {'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    drr_args = [bids, out, 'participant', '-w', tmp_path / 'work', '--pipelines', 'drr']
    drr_args += ['--drr-sim2real', '--drr-detector', '64', '--drr-pixel-size', '6']
    missing = run_cli(*drr_args, env=cache)
    assert missing.returncode == 126, missing.stderr
    errors = [line for line in missing.stderr.splitlines() if 'error' in line.lower()]
    assert len(errors) == 1 and 'sim2real' in errors[0] and '--train cyclegan' in errors[0]

    train = run_cli(
        bids, out, 'group', '-w', tmp_path / 'work', '--train', 'cyclegan',
        '--simulated-radiographs', drr_dir, '--real-radiographs', real_dir, '--steps', '2',
        '--train-patch-size', '32', '--network-width', '4', '--validate-every', '1',
        '--select-best', env=cache,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert train.stderr.count('skipped:') == 1 and 'notes.bin' in train.stderr
    models = out / 'models' / 'sim2real'
    card = json.loads((models / 'sim2real.json').read_text())
    assert (
        card['trained']['NetworkWidth'] == {'ngf': 4, 'ndf': 4}
        and card['trained']['CropSize'] == 32
    )
    assert card['trained']['Selected']['Step'] in (1, 2)
    assert card['trained']['Images'] == {'A': 9, 'B': 9, 'HeldOutA': 1, 'HeldOutB': 1}
    assert len(list((models / 'validation').glob('*.png'))) == 2
    assert (models / 'training_log.tsv').read_text().count('\n') == 3

    applied = run_cli(*drr_args, '--nprocs', '1', env={**cache, WEIGHTS_DIR_ENV: ''})
    assert applied.returncode == 0, applied.stderr
    anat = out / 'sub-01' / 'anat'
    mapped = nb.load(anat / 'sub-01_desc-pasim2real_drr.nii.gz')
    drr = nb.load(anat / 'sub-01_desc-pa_drr.nii.gz')
    data = np.asanyarray(mapped.dataobj)
    assert mapped.get_data_dtype() == np.float32 and data.shape == drr.shape == (64, 64)
    assert np.allclose(mapped.affine, drr.affine) and 0 <= data.min() and data.max() <= 1
    png = Image.open(anat / 'sub-01_desc-pasim2real_drr.png')
    assert png.mode == 'I;16'
    assert np.abs(np.asarray(png, np.float64) - np.rint(data.T * 65535)).max() <= 1
    sidecar = json.loads((anat / 'sub-01_desc-pasim2real_drr.json').read_text())
    assert sidecar['ModelWeightsSHA256'] == card['sha256'] == sha256_of(models / 'sim2real.pt')
    assert (out / 'sub-01' / 'figures' / 'sub-01_desc-sim2real_drr.png').stat().st_size > 5_000


def test_cyclegan_training_needs_its_real_radiographs_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([str(tmp_path / 'bids'), str(tmp_path / 'out'), 'group', '--train', 'cyclegan'])
    assert exit_info.value.code == 2
    assert '--train cyclegan needs --real-radiographs DIR' in capsys.readouterr().err


def test_too_few_readable_drrs_is_one_line_naming_the_folder_and_the_fix(tmp_path):
    drr_dir, real_dir = tmp_path / 'drrs', tmp_path / 'real'
    drr_dir.mkdir(), real_dir.mkdir()
    ramp = np.outer(np.linspace(0, 1, 48), np.linspace(0.2, 1, 40))
    Image.fromarray((ramp * 200).astype(np.uint8)).save(drr_dir / 'drr0.png')
    (drr_dir / 'drr1.png').write_bytes(b'truncated')
    for n in range(3):
        Image.fromarray((ramp * 250).astype(np.uint8)).save(real_dir / f'cr{n}.png')
    ct = SHARED_DATA / 'ct' / 'totalseg_example_ct_sm.nii.gz'
    bids = write_bids(tmp_path / 'bids', {'sub-01/anat/sub-01_ct.nii.gz': ct}, ['01'])
    refused = run_cli(
        bids, tmp_path / 'out', 'group', '--train', 'cyclegan', '--simulated-radiographs',
        drr_dir, '--real-radiographs', real_dir, '--train-patch-size', '32',
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith('mrctprep: error')]
    assert len(errors) == 1
    assert f'1 readable simulated radiograph(s) to train on in {drr_dir}' in errors[0]
    assert '--simulated-radiographs DIR' in errors[0]
    assert not (tmp_path / 'out' / 'models').exists()
