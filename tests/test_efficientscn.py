"""EfficientSCN: the networks against the authors' checkpoints, the inference geometry, and the
authors' localization weights finding the organs of a real abdominal CT."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil

import nibabel as nb
import numpy as np
import pytest
import torch
from torch.nn import functional

from conftest import SHARED_DATA, run_cli, write_bids
from mrctprep.cli.main import run
from mrctprep.imaging.organ_boxes import (
    area_resize,
    area_weights,
    box_from_mask,
    box_world_ras,
    from_lps_array,
    localization_input,
    localization_spacing,
    localization_training_sample,
    next_allowed_size,
    to_lps_volume,
    training_samples,
)
from mrctprep.imaging.organs import flare_labels
from mrctprep.models.efficientscn import (
    LocalizationNet,
    SpatialConfigurationNet,
    binary_entropy_bits,
    count_parameters,
    fuse,
    upsample_separable,
)
from mrctprep.models.efficientscn_import import (
    torch_shape_in_tensorflow,
    upstream_variables,
)
from mrctprep.models.efficientscn_inference import load_localization_net, localization_mask
from mrctprep.models.efficientscn_training import (
    LOCALIZATION_STAGE,
    SCN_STAGE,
    AdaptiveGradientClipper,
    StageTraining,
    TrainingSample,
    generalized_dice_loss,
    random_elastic_displacement,
)
from mrctprep.models.tf_checkpoint import (
    checkpoint_prefix,
    object_graph_paths,
    read_checkpoint_index,
    read_tensor,
)
from mrctprep.models.training import TrainingSettings, run_training
from mrctprep.models.weights import WEIGHTS_DIR_ENV, resolve_weights, sha256_of

RELEASED = SHARED_DATA / 'models' / 'efficientscn'
CT = SHARED_DATA / 'ct'
#: TotalSegmentator's labels of FLARE21's organs: spleen, kidneys, liver, pancreas.
FLARE_ORGANS_IN_TOTALSEG = (1, 2, 3, 5, 7)


def _numeric_entries(folder):
    entries = read_checkpoint_index(checkpoint_prefix(folder))
    return {key: entry for key, entry in entries.items() if not key.startswith('_')}


@pytest.mark.parametrize(
    ('folder', 'network', 'variables'),
    [('localization', LocalizationNet, 42), ('segmentation', SpatialConfigurationNet, 212)],
)
def test_every_released_variable_is_a_parameter_of_the_same_shape(folder, network, variables):
    net = network()
    entries = _numeric_entries(RELEASED / folder)
    mapping = upstream_variables(net)
    parameters = dict(net.named_parameters())
    assert len(entries) == len(mapping) == len(parameters) == variables
    assert {v.checkpoint_key for v in mapping} == set(entries)
    assert {v.torch_key for v in mapping} == set(parameters)
    for variable in mapping:
        entry = entries[variable.checkpoint_key]
        shape = torch_shape_in_tensorflow(tuple(parameters[variable.torch_key].shape))
        assert (entry.dtype_name, entry.shape) == ('float32', shape), variable
    # the authors' parameter counts, summed from their checkpoints
    assert count_parameters(net) == sum(math.prod(e.shape) for e in entries.values())


def test_the_localization_mapping_follows_the_checkpoints_own_object_names():
    paths = object_graph_paths(checkpoint_prefix(RELEASED / 'localization'))
    for variable in upstream_variables(LocalizationNet()):
        assert variable.upstream_name in paths[variable.checkpoint_key], variable


def test_the_spatial_unet_of_the_background_is_the_one_with_five_inputs():
    """Upstream's list of spatial U-Nets is indexed by label - 1: the background's comes last."""
    entries = _numeric_entries(RELEASED / 'segmentation')
    first_kernels = {
        int(m.group(1)) // 34: entries[key].shape[3]
        for key in entries
        if (m := re.match(r'spatial_configuration/variables/(\d+)/', key))
        and int(m.group(1)) % 34 == 0
    }
    assert first_kernels == {0: 4, 1: 4, 2: 4, 3: 4, 4: 5}


def test_linear_upsampling_is_trilinear_and_cubic_keeps_constants_and_ramps():
    x = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64)
    expected = functional.interpolate(x, scale_factor=2, mode='trilinear', align_corners=False)
    torch.testing.assert_close(upsample_separable(x, 2, cubic=False), expected)
    ramp = torch.arange(8, dtype=torch.float64).view(1, 1, 1, 1, 8).expand(1, 1, 2, 2, 8)
    up = upsample_separable(ramp, 4, cubic=True)[0, 0, 0, 0]
    # half-voxel aligned: sub-voxel p of voxel i sits at i + (2p - 3) / 8; exact away from edges
    torch.testing.assert_close(up[8:24], torch.arange(8, 24, dtype=torch.float64) / 4 - 0.375)
    assert torch.allclose(
        upsample_separable(torch.full((1, 1, 2, 3, 2), 0.7), 4, cubic=True), torch.tensor(0.7)
    )


def test_fusion_trusts_the_certain_spatial_branch_and_renormalises():
    local = torch.tensor([4.0, -4.0, 0.0, -4.0, -4.0]).view(1, 5, 1, 1, 1)
    certain = torch.tensor([-30.0, 30.0, -30.0, -30.0, -30.0]).view(1, 5, 1, 1, 1)
    fused = fuse(local, certain)[0, :, 0, 0, 0]
    assert fused.argmax() == 1 and fused.sum().item() == pytest.approx(1.0, abs=1e-4)
    uncertain = torch.zeros(1, 5, 1, 1, 1)  # sigmoid 0.5: one full bit, so the local branch wins
    assert fuse(local, uncertain)[0, :, 0, 0, 0].argmax() == 0
    saturated = torch.tensor([-120.0, 0.0, 40.0], requires_grad=True)  # sigmoid: 0, 0.5, 1
    bits = binary_entropy_bits(saturated)
    assert bits.tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)
    bits.sum().backward()
    assert torch.isfinite(saturated.grad).all()


def test_the_scn_stops_gradients_into_the_local_appearance_from_the_spatial_branch():
    net = SpatialConfigurationNet(filters=4, spatial_filters=2).eval()
    outputs = net.outputs(torch.randn(1, 1, 32, 32, 32))
    outputs.spatial_logits.sum().backward()
    assert all(p.grad is None for p in net.local_appearance.parameters())
    assert all(p.grad is not None for p in net.spatial_unets.parameters())


def test_the_allowed_sizes_and_spacing_rules():
    sizes = (32, 64, 96, 128)
    assert [next_allowed_size(e, sizes) for e in (10, 32, 33, 127.5, 128, 400)] == [
        32,
        64,
        64,
        128,
        128,
        128,
    ]
    assert localization_spacing((112, 101, 122), (3.0, 3.0, 3.0)) == (6.0, 6.0, 6.0)
    # 600 mm across x needs 100 voxels at 6 mm where 80 is the most: 6 x (100 / 80 + 0.02)
    assert localization_spacing((100, 500, 500), (2.5, 1.2, 1.2)) == pytest.approx((7.62,) * 3)


def test_area_resizing_averages_boxes_with_fractional_overlaps():
    weights = area_weights(5, 2)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights[0], [0.4, 0.4, 0.2, 0, 0], rtol=1e-6)
    volume = np.random.default_rng(0).normal(size=(6, 4, 8)).astype(np.float32)
    halved = volume.reshape(3, 2, 2, 2, 4, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(area_resize(volume, (3, 2, 4)), halved, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def localization_weights(tmp_path_factory):
    output = tmp_path_factory.mktemp('weights') / 'efficientscn-localization.pt'
    result = run_cli(
        'import-weights',
        'efficientscn-localization',
        RELEASED / 'localization',
        '--output',
        output,
    )
    assert result.returncode == 0, result.stderr
    return output


def test_import_weights_converts_the_released_checkpoint_with_its_provenance(localization_weights):
    card = json.loads(localization_weights.with_suffix('.json').read_text())
    variables = RELEASED / 'localization' / 'variables'
    assert card['converted_from']['files'] == [
        {'file': name, 'sha256': hashlib.sha256((variables / name).read_bytes()).hexdigest()}
        for name in ('variables.index', 'variables.data-00000-of-00001')
    ]
    state = resolve_weights(
        'efficientscn-localization', explicit=localization_weights
    ).load_state_dict()
    prefix = checkpoint_prefix(RELEASED / 'localization')
    key = 'model/variables/20/.ATTRIBUTES/VARIABLE_VALUE'  # expanding level 0, first conv
    kernel = read_tensor(prefix, key, read_checkpoint_index(prefix)[key], 1)
    assert kernel.shape == (3, 3, 3, 64, 32)
    # TensorFlow's kernel[z, y, x, in, out] is torch's weight[out, in, z, y, x]
    assert state['unet.expanding.0.conv0.weight'][7, 40, 0, 1, 2].item() == kernel[0, 1, 2, 40, 7]


def test_import_weights_refuses_the_wrong_network_in_one_line(tmp_path, capsys):
    output = tmp_path / 'out' / 'efficientscn-localization.pt'
    code = run(
        [
            'import-weights',
            'efficientscn-localization',
            str(RELEASED / 'segmentation'),
            '--output',
            str(output),
        ]
    )
    assert code == 126
    stderr = capsys.readouterr().err
    assert stderr.count('\n') == 1 and 'not the LocalizationNet checkpoint' in stderr
    assert not output.parent.exists()


def _organ_world_points():
    """The FLARE organs of the TotalSegmentator label map in world mm on the full CT's grid.

    The label map lies on ``totalseg_example_ct_sm``'s grid, whose voxels are slices of the
    full CT but whose header kept the full CT's origin: the slice offset is found from the
    voxels themselves."""
    full, small = (
        nb.load(CT / 'totalseg_example_ct.nii.gz'),
        nb.load(CT / 'totalseg_example_ct_sm.nii.gz'),
    )
    full_data, small_data = np.asarray(full.dataobj), np.asarray(small.dataobj)
    offsets = [
        z
        for z in range(full.shape[2] - small.shape[2] + 1)
        if np.array_equal(full_data[..., z : z + small.shape[2]], small_data)
    ]
    assert offsets == [82]
    labels = np.asarray(nb.load(CT / 'totalseg_example_seg.nii.gz').dataobj)
    voxels = np.argwhere(np.isin(labels, FLARE_ORGANS_IN_TOTALSEG)) + [0, 0, offsets[0]]
    return nb.affines.apply_affine(full.affine, voxels), full


def test_the_released_localization_net_boxes_the_organs_of_a_real_ct(localization_weights):
    points, ct = _organ_world_points()
    volume = to_lps_volume(ct)
    loc = localization_input(volume)
    assert loc.array.shape == (64, 64, 64) and loc.spacing == (6.0, 6.0, 6.0)
    torch.set_num_threads(2)
    state = resolve_weights(
        'efficientscn-localization', explicit=localization_weights
    ).load_state_dict()
    mask = localization_mask(load_localization_net(state, 'cpu'), loc, 'cpu')
    low, high = (np.array(corner) for corner in box_world_ras(box_from_mask(mask, loc), volume))
    inside = np.all((points >= low) & (points <= high), axis=1)
    assert inside.mean() >= 0.95
    # and the box is the organs', not the scan's: well under half of the CT's volume
    ct_extent = np.array(ct.shape) * 3.0
    assert np.prod(high - low) < 0.5 * np.prod(ct_extent)


def test_group_training_then_organ_seg_writes_labels_table_box_and_figure(
    tmp_path, localization_weights
):
    """Without SCN weights organ-seg exits 126 in one line; group --train efficientscn trains a
    small SCN (2 steps) from TotalSegmentator labels; organ-seg then writes every output."""
    ct = CT / 'totalseg_example_ct_sm.nii.gz'
    bids = write_bids(tmp_path / 'bids', {'sub-01/anat/sub-01_ct.nii.gz': ct}, ['01'])
    labels = tmp_path / 'labels'
    (labels / 'sub-01' / 'anat').mkdir(parents=True)
    shutil.copyfile(
        CT / 'totalseg_example_seg.nii.gz', labels / 'sub-01' / 'anat' / 'sub-01_dseg.nii.gz'
    )
    rows = ['index\tname'] + [f'{index}\t{name}' for index, name in TOTALSEG_NAMES.items()]
    (labels / 'dseg.tsv').write_text('\n'.join(rows) + '\n')
    out, cache = tmp_path / 'out', {'XDG_CACHE_HOME': str(tmp_path / 'cache'), WEIGHTS_DIR_ENV: ''}
    localization = ['--weights', f'efficientscn-localization={localization_weights}']
    args = [bids, out, 'participant', '-w', tmp_path / 'work', '--pipelines', 'organ-seg']
    args += ['--skip-bids-validation', *localization]  # the validator has its own tests
    missing = run_cli(*args, env=cache)
    assert missing.returncode == 126, missing.stderr
    errors = [line for line in missing.stderr.splitlines() if 'error' in line.lower()]
    assert len(errors) == 1 and 'efficientscn-segmentation' in errors[0]
    assert '--train efficientscn --train-labels DIR' in errors[0]

    train = run_cli(
        bids, out, 'group', '-w', tmp_path / 'work', '--train', 'efficientscn', '--train-labels',
        labels, *localization, '--steps', '2', '--network-width', '4', '--train-spacing', '6',
        '--no-augmentation', '--skip-bids-validation', env=cache,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    models = out / 'models' / 'efficientscn-segmentation'
    card = json.loads((models / 'efficientscn-segmentation.json').read_text())
    assert card['trained']['NetworkWidth'] == {'filters': 4, 'spatial_filters': 2}
    assert card['trained']['Augmentation'] == 'none'
    assert (models / 'training_log.tsv').read_text().count('\n') == 3

    # with ct-ingest too, as CT users run it: the group level tabulates both
    result = run_cli(*args, '--pipelines', 'organ-seg', 'ct-ingest', '--nprocs', '1', env=cache)
    assert result.returncode == 0, result.stderr
    anat = out / 'sub-01' / 'anat'
    dseg = nb.load(anat / 'sub-01_seg-organs_dseg.nii.gz')
    conformed = nb.load(ct)
    labels = np.asanyarray(dseg.dataobj)
    assert dseg.get_data_dtype() == np.uint8 and labels.shape == conformed.shape
    assert np.allclose(dseg.affine, conformed.affine) and labels.max() <= 4
    sidecar = json.loads((anat / 'sub-01_seg-organs_dseg.json').read_text())
    box = sidecar['LocalizationBox']
    assert np.all(np.array(box['MinRAS']) < np.array(box['MaxRAS']))
    assert sidecar['LocalizationWeightsSHA256'] == sha256_of(localization_weights)
    assert sidecar['SegmentationWeightsSHA256'] == card['sha256']
    assert sidecar['SegmentationSpacingMM'] == 6.0  # the grid it was trained on
    # the table's volumes and HU are those of the written labels on the CT
    rows = [
        line.split('\t')
        for line in (anat / 'sub-01_seg-organs_volumes.tsv').read_text().splitlines()
    ]
    assert rows[0] == ['organ', 'label', 'volume_ml', 'mean_hu', 'median_hu', 'touches_fov_edge']
    hu = np.asanyarray(conformed.dataobj, dtype=np.float64)
    for organ, label, volume, mean, _, _ in rows[1:]:
        inside = labels == int(label)
        assert float(volume) == pytest.approx(inside.sum() * 27 / 1000, abs=1e-3), organ
        if inside.any():
            assert float(mean) == pytest.approx(hu[inside].mean(), abs=0.06), organ
    table = (out / 'seg-organs_dseg.tsv').read_text().splitlines()
    assert table[0] == 'index\tname\tabbreviation\tcolor' and table[2].startswith('1\tliver')
    assert (out / 'sub-01' / 'figures' / 'sub-01_desc-organs_dseg.svg').stat().st_size > 5_000
    group = run_cli(
        bids, out, 'group', '-w', tmp_path / 'work', '--skip-bids-validation', env=cache
    )
    assert group.returncode == 0, group.stderr
    header, row = (out / 'group_organs.tsv').read_text().splitlines()
    values = dict(zip(header.split('\t'), row.split('\t'), strict=True))
    assert values['participant_id'] == 'sub-01' and values['session_id'] == 'n/a'
    assert (
        values['liver_volume_ml'] == rows[1][2]
        and values['pancreas_touches_fov_edge'] == rows[4][5]
    )


#: TotalSegmentator's names of the labels that matter here (its class map; others: background).
TOTALSEG_NAMES = {
    1: 'spleen',
    2: 'kidney_right',
    3: 'kidney_left',
    4: 'gallbladder',
    5: 'liver',
    7: 'pancreas',
}


def test_generalized_dice_is_zero_for_a_perfect_and_one_for_a_disjoint_prediction():
    target = functional.one_hot(torch.randint(5, (1, 8, 8, 8)), 5).permute(0, 4, 1, 2, 3).float()
    assert generalized_dice_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert generalized_dice_loss(1 - target, target).item() == pytest.approx(1.0, abs=1e-3)


def test_the_elastic_deformation_is_smooth_and_within_15_mm():
    """Upstream's B-spline deformation: at most 15 mm anywhere, several mm typically, and
    smooth: neighbours move apart by no more than two control points' largest difference
    (30 mm) spread over the voxels between them (an axis' size / 8)."""
    shape, spacing = (40, 48, 64), 2.0
    field = random_elastic_displacement(shape, (spacing,) * 3, torch.Generator().manual_seed(3))[0]
    mm = field * torch.tensor([spacing * size / 2 for size in shape[::-1]])
    assert mm.shape == (*shape, 3)
    assert 3.0 < float(mm.abs().max()) <= 15.0 and float(mm.std()) > 1.0
    for axis, size in enumerate(shape):
        assert float(mm.diff(dim=axis).abs().max()) <= 2 * 15.0 / (size / 8)


def test_the_clipper_follows_the_running_norm():
    clipper = AdaptiveGradientClipper()
    parameter = torch.nn.Parameter(torch.zeros(4))
    parameter.grad = torch.full((4,), 100.0)  # norm 200, over 5 x 10
    assert clipper.clip([parameter]) == pytest.approx(200.0)
    assert parameter.grad.norm().item() == pytest.approx(50.0, rel=1e-5)
    assert clipper.mean_norm == pytest.approx(0.01 * 50 + 0.99 * 10)


@pytest.fixture(scope='module')
def training_crop():
    """The training CT's organs (TotalSegmentator's pseudo-labels as FLARE labels) prepared
    as an SCN crop, at 6 mm instead of 2 mm so that a test trains in seconds."""
    ct = nb.load(CT / 'totalseg_example_ct_sm.nii.gz')
    names = nb.load(CT / 'totalseg_example_seg.nii.gz')
    labels = flare_labels(np.asarray(names.dataobj), TOTALSEG_NAMES)
    volume = to_lps_volume(ct)
    lps_labels = to_lps_volume(nb.Nifti1Image(labels.astype(np.float32), ct.affine)).array
    ((image, crop_labels),) = training_samples(
        volume, np.rint(lps_labels).astype(np.uint8), 5, spacing=6.0
    )
    return TrainingSample(
        torch.from_numpy(image.array), torch.from_numpy(crop_labels), (6.0, 6.0, 6.0)
    )


def test_scn_training_crops_frame_the_organs_as_training_and_inference_do():
    """At 4 mm the training CT (90 mm tall) gives two crop sizes: the labels' box with
    upstream's 32 mm margin and with inference's 10 mm; both hold every organ at its volume
    and have air (-1024 HU) beyond the scan."""
    ct = nb.load(CT / 'totalseg_example_ct_sm.nii.gz')
    labels = flare_labels(
        np.asarray(nb.load(CT / 'totalseg_example_seg.nii.gz').dataobj), TOTALSEG_NAMES
    )
    volume = to_lps_volume(ct)
    lps_labels = to_lps_volume(nb.Nifti1Image(labels.astype(np.float32), ct.affine)).array
    crops = training_samples(volume, np.rint(lps_labels).astype(np.uint8), 5, spacing=4.0)
    assert [image.array.shape for image, _ in crops] == [(64, 96, 96), (32, 64, 96)]
    organ_ml = [(labels == organ).sum() * 27 / 1000 for organ in (1, 3)]  # liver, spleen
    for image, crop_labels in crops:
        assert crop_labels.shape == image.array.shape
        assert [(crop_labels == organ).sum() * 64 / 1000 for organ in (1, 3)] == pytest.approx(
            organ_ml, rel=0.1
        )
        above_the_scan = image.crop.pad_before[0] * 3 // 4 - 1  # 4 mm slices above 3 mm pad
        np.testing.assert_allclose(image.array[:above_the_scan], -0.5, atol=1e-6)


def test_scn_training_on_a_real_crop_resumes_exactly(training_crop, tmp_path):
    assert tuple(training_crop.image.shape) == (32, 64, 64)
    assert set(torch.unique(training_crop.labels).tolist()) == {0, 1, 2, 3, 4}

    def task():
        torch.manual_seed(0)
        return StageTraining(
            SpatialConfigurationNet(filters=4, spatial_filters=2),
            [training_crop],
            SCN_STAGE,
            device='cpu',
            seed=1,
        )

    def settings(steps, resume):
        return TrainingSettings(
            'scn', steps, tmp_path / 'checkpoint.pt', checkpoint_every=2, resume=resume
        )

    torch.set_num_threads(2)
    straight = task()
    history = run_training(straight, settings(4, False))
    assert all(np.isfinite(row['loss']) and row['grad_norm'] > 0 for row in history)
    run_training(task(), settings(2, False))
    resumed = task()
    run_training(resumed, settings(4, True))
    for key, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[key]), key


def test_the_lps_layout_round_trips_any_voxel_order():
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    las = nb.Nifti1Image(data, np.diag([-2.0, 1.0, 3.0, 1.0]))
    volume = to_lps_volume(las)
    assert volume.array.shape == (4, 3, 2) and volume.spacing == (3.0, 1.0, 2.0)
    # LPS: x grows to the left (index 0 of LAS's flipped-to-L axis), y posterior, z superior
    assert volume.array[0, 0, 0] == data[0, 2, 0]
    np.testing.assert_array_equal(from_lps_array(volume.array, las), data)


def test_organ_training_options_are_checked_before_any_work(tmp_path, capsys):
    base = [str(tmp_path / 'bids'), str(tmp_path / 'out'), 'group', '--train', 'efficientscn']
    labels = ['--train-labels', str(tmp_path)]
    for extra, said in (
        ([], '--train efficientscn needs the label maps: --train-labels DIR'),
        (
            [*labels, '--fine-tune-localization'],
            '--fine-tune-localization trains given weights further: add --weights '
            'efficientscn-localization=FILE',
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run([*base, *extra])
        assert exit_info.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run([*base[:-1], 'iguane', '--no-augmentation'])
    assert '--no-augmentation go with --train efficientscn' in capsys.readouterr().err


def test_the_localization_learns_the_merged_organs_of_its_training_ct():
    """The localization sample holds the scan as inference prepares it (3 mm smoothing first)
    and the organs merged on its 6 mm grid, with the organs' volume; the localization stage's
    training (no augmentation, a raised learning rate) halves its Dice loss in 15 steps."""
    ct = nb.load(CT / 'totalseg_example_ct_sm.nii.gz')
    labels = flare_labels(
        np.asarray(nb.load(CT / 'totalseg_example_seg.nii.gz').dataobj), TOTALSEG_NAMES
    )
    volume = to_lps_volume(ct)
    lps_labels = to_lps_volume(nb.Nifti1Image(labels.astype(np.float32), ct.affine)).array
    image, merged = localization_training_sample(volume, np.rint(lps_labels).astype(np.uint8))
    assert image.array.shape == localization_input(volume).array.shape == merged.shape
    organ_ml = (labels > 0).sum() * 27 / 1000
    assert merged.sum() * np.prod(image.spacing) / 1000 == pytest.approx(organ_ml, rel=0.15)

    torch.manual_seed(0)
    torch.set_num_threads(2)
    sample = TrainingSample(torch.from_numpy(image.array), torch.from_numpy(merged), image.spacing)
    task = StageTraining(
        LocalizationNet(filters=16), [sample], LOCALIZATION_STAGE, device='cpu', seed=0,
        augment=False, learning_rate=1e-3,
    )  # fmt: skip
    losses = [task.train_step()['dice'] for _ in range(15)]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
