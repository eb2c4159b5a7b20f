"""The importer of the IGUANe authors' Keras weights, on .h5 files written here in Keras 2's
layout from random weights; convolutions checked against numpy references of Keras' semantics.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli
from mrctprep.cli.main import run
from mrctprep.core.errors import ResourceError
from mrctprep.models.iguane import IguaneGenerator
from mrctprep.models.keras_import import keras_generator_state_dict, read_keras_weights
from mrctprep.models.weights import resolve_weights

# The Keras generator's Sequential blocks in the order model_architectures.Generator builds
# them, with the torch block each becomes; a Concatenate follows every up-sampling block and
# precedes the head.
KERAS_BLOCKS = [
    *[b for i in range(4) for b in (f'encoders.{i}', f'downs.{i}')],
    'bottleneck',
    *[b for i in range(4) for b in (f'ups.{i}', f'decoders.{i}')],
    'head',
]
Layers = list[tuple[str, dict[str, np.ndarray]]]


def random_generator(seed: int = 0) -> IguaneGenerator:
    """Random weights everywhere, biases and norm parameters included (Keras' init has them
    zero and one, which would hide a swapped bias, scale or offset)."""
    torch.manual_seed(seed)
    generator = IguaneGenerator()
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            base = 1.0 if name.endswith('scale') else 0.0
            parameter.copy_(base + 0.2 * torch.randn_like(parameter))
    return generator.eval()


def keras_layers(generator: IguaneGenerator) -> Layers:
    """The generator's weights as Keras 2 holds them: layers with weights in model order,
    named with Keras' per-class counters, kernels channels-last."""
    counters = Counter()

    def unique(base: str) -> str:
        counters[base] += 1
        return base if counters[base] == 1 else f'{base}_{counters[base] - 1}'

    layers = []
    for block in KERAS_BLOCKS:
        module = generator.get_submodule(block)
        conv, norm = (module, None) if block == 'head' else (module[0], module[2])
        conv_name = unique('conv3d_transpose' if block.startswith('ups') else 'conv3d')
        # torch (out, in, D, H, W) / transposed (in, out, D, H, W) -> Keras (D, H, W, in, out)
        # / transposed (D, H, W, out, in): the same permutation
        weights = {
            f'{conv_name}/kernel:0': conv.weight.detach().permute(2, 3, 4, 1, 0).numpy(),
            f'{conv_name}/bias:0': conv.bias.detach().numpy(),
        }
        if norm is not None:
            norm_name = unique('instance_normalization')
            weights[f'{norm_name}/scale:0'] = norm.scale.detach().numpy()
            weights[f'{norm_name}/offset:0'] = norm.offset.detach().numpy()
        layers.append((unique('sequential'), weights))
    return layers


def write_keras_h5(
    path: Path, layers: Layers, *, whole_model: bool = False, fixed_length: bool = True
) -> Path:
    """What Keras 2's save_weights (or, ``whole_model``, save) writes for the generator: all
    layers in ``layer_names`` (those without weights have an empty ``weight_names``), groups
    created in sorted order, each weight a dataset at its weight name inside its layer. (A file
    that TensorFlow 2.12 wrote for the authors' generator has exactly these names.)

    Keras hands h5py lists of bytes, which older h5py stored as fixed-length strings and
    h5py 3.16 stores as variable-length ones (``fixed_length=False``)."""

    def strings(values: list[str]) -> list[bytes] | np.ndarray:
        encoded = [v.encode() for v in values]
        return np.array(encoded) if fixed_length and encoded else encoded

    concatenates = iter(['concatenate', *(f'concatenate_{i}' for i in range(1, 5))])
    names = ['input_1']
    for name, weights in layers:
        if name == layers[-1][0]:
            names.append(next(concatenates))  # the input joins the features before the head
        names.append(name)
        if any('conv3d_transpose' in w for w in weights):
            names.append(next(concatenates))  # the skip connection
    names.append('add')
    weights = dict(layers)
    with h5py.File(path, 'w') as h5:
        root = h5
        if whole_model:
            h5.attrs['model_config'] = json.dumps({'class_name': 'Functional'}).encode()
            root = h5.create_group('model_weights')
        root.attrs['layer_names'] = strings(names)
        root.attrs['backend'] = b'tensorflow'
        root.attrs['keras_version'] = b'2.12.0'
        for name in sorted(names):
            group = root.create_group(name)
            group.attrs['weight_names'] = strings(list(weights.get(name, {})))
            for weight_name, value in weights.get(name, {}).items():
                group.create_dataset(weight_name, data=value)
        root.create_group('top_level_model_weights').attrs['weight_names'] = []
    return path


@pytest.fixture(scope='module')
def generator() -> IguaneGenerator:
    return random_generator()


@pytest.fixture(scope='module')
def keras_h5(generator, tmp_path_factory) -> Path:
    return write_keras_h5(tmp_path_factory.mktemp('keras') / 'iguane.h5', keras_layers(generator))


@pytest.fixture(scope='module')
def imported(keras_h5) -> IguaneGenerator:
    model = IguaneGenerator()
    model.load_state_dict(keras_generator_state_dict(keras_h5))
    return model.eval()


def test_the_file_reads_in_keras_layer_order(keras_h5):
    layers = read_keras_weights(keras_h5)
    names = [name for name, _ in layers]
    assert names == ['sequential', *(f'sequential_{i}' for i in range(1, 18))]
    assert list(layers[9][1]) == [
        'conv3d_transpose/kernel:0',
        'conv3d_transpose/bias:0',
        'instance_normalization_9/scale:0',
        'instance_normalization_9/offset:0',
    ]
    assert layers[9][1]['conv3d_transpose/kernel:0'].shape == (4, 4, 4, 128, 256)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow's 'same': output ceil(size / stride), the padding split with the extra
    voxel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def keras_conv3d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """Keras Conv3D, padding 'same': x (D, H, W, in), kernel (k, k, k, in, out)."""
    k = kernel.shape[0]
    paddings = [_same_padding(n, k, stride) for n in x.shape[:3]]
    outs = [out for out, _, _ in paddings]
    padded = np.pad(x, [(before, after) for _, before, after in paddings] + [(0, 0)])
    y = np.zeros((*outs, kernel.shape[4]))
    for i, j, m in np.ndindex(k, k, k):
        window = padded[i::stride, j::stride, m::stride][: outs[0], : outs[1], : outs[2]]
        y += window @ kernel[i, j, m]
    return y + bias


def keras_conv3d_transpose(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int
) -> np.ndarray:
    """Keras Conv3DTranspose, padding 'same': the adjoint of the 'same' strided correlation
    from the output grid (size x stride) to x, i.e. every input voxel scatters kernel x value
    onto the padded output. x (D, H, W, in), kernel (k, k, k, out, in)."""
    k = kernel.shape[0]
    sizes = x.shape[:3]
    full = np.zeros([(n - 1) * stride + k for n in sizes] + [kernel.shape[3]])
    for tap in np.ndindex(k, k, k):
        scattered = tuple(
            slice(t, t + stride * n, stride) for t, n in zip(tap, sizes, strict=True)
        )
        full[scattered] += x @ kernel[tap].T
    crop = []
    for n in sizes:
        _, before, _ = _same_padding(n * stride, k, stride)
        crop.append(slice(before, before + n * stride))
    return full[tuple(crop)] + bias


@pytest.mark.parametrize(
    ('group', 'block', 'reference', 'stride'),
    [
        ('sequential_2', 'encoders.1', keras_conv3d, 1),  # k3, 16 -> 32
        ('sequential_3', 'downs.1', keras_conv3d, 2),  # k4 s2, 32 -> 32
        ('sequential_15', 'ups.3', keras_conv3d_transpose, 2),  # k4 s2 up, 32 -> 16
        ('sequential_17', 'head', keras_conv3d, 1),  # k1, 17 -> 1
    ],
)
def test_imported_convolutions_compute_what_keras_computes(
    keras_h5, imported, group, block, reference: Callable, stride
):
    with h5py.File(keras_h5) as h5:
        names = [n.decode() for n in h5[group].attrs['weight_names']]  # fixed-length: bytes
        kernel, bias = (np.asarray(h5[group][n], dtype=np.float64) for n in names[:2])
    conv = imported.get_submodule(block)
    # float64: the check is of the layout; float32 sums of 864 products differ by ~1e-6
    conv = copy.deepcopy(conv if isinstance(conv, nn.Conv3d) else conv[0]).double()
    in_channels = kernel.shape[4 if isinstance(conv, nn.ConvTranspose3d) else 3]
    x = np.random.default_rng(1).standard_normal((6, 8, 10, in_channels))
    expected = reference(x, kernel, bias, stride)
    with torch.no_grad():
        ours = conv(torch.from_numpy(x.transpose(3, 0, 1, 2)[None]))
    ours = ours[0].permute(1, 2, 3, 0).numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-5


@pytest.mark.parametrize(
    ('whole_model', 'fixed_length'), [(False, True), (True, False)], ids=['save_weights', 'save']
)
def test_the_imported_generator_matches_the_exported_one(
    generator, tmp_path, whole_model, fixed_length
):
    layers = keras_layers(generator)
    h5_file = write_keras_h5(
        tmp_path / 'g.h5', layers, whole_model=whole_model, fixed_length=fixed_length
    )
    model = IguaneGenerator()
    model.load_state_dict(keras_generator_state_dict(h5_file))
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        difference = (model.eval()(x) - generator(x)).abs().max().item()
    assert difference < 1e-5


def _one_line_error(h5_file: Path) -> str:
    with pytest.raises(ResourceError) as error:
        keras_generator_state_dict(h5_file)
    message = str(error.value)
    assert '\n' not in message and str(h5_file) in message
    return message


def test_a_wrong_shape_names_the_file_and_the_layer(generator, tmp_path):
    layers = keras_layers(generator)
    layers[10][1]['conv3d_9/kernel:0'] = np.zeros((3, 3, 3, 128, 128), np.float32)
    message = _one_line_error(write_keras_h5(tmp_path / 'shape.h5', layers))
    assert "layer #10 'sequential_10' (the generator's decoders.0)" in message
    assert (
        'conv3d_9/kernel:0 is float32 (3, 3, 3, 128, 128), expected float (3, 3, 3, 256, 128)'
        in message
    )


def test_a_missing_layer_names_the_file_and_the_layer(generator, tmp_path):
    without_head = _one_line_error(write_keras_h5(tmp_path / 'a.h5', keras_layers(generator)[:-1]))
    assert "layer #17 (the generator's head) is missing" in without_head
    assert '(17 layers with weights, the generator has 18)' in without_head
    layers = keras_layers(generator)
    del layers[3]
    message = _one_line_error(write_keras_h5(tmp_path / 'b.h5', layers))
    assert "layer #3 'sequential_4' (the generator's downs.1)" in message
    assert message.endswith('(17 layers with weights, the generator has 18)')


def test_a_wrong_layer_type_or_a_foreign_file_is_refused(generator, tmp_path):
    layers = keras_layers(generator)
    renamed = {k.replace('conv3d_transpose', 'conv3d_99'): v for k, v in layers[9][1].items()}
    layers[9] = ('sequential_9', renamed)
    message = _one_line_error(write_keras_h5(tmp_path / 'type.h5', layers))
    assert 'conv3d_99/kernel:0 where a conv3d_transpose kernel belongs' in message
    (tmp_path / 'not.h5').write_text('not HDF5')
    assert 'not a readable Keras HDF5 file' in _one_line_error(tmp_path / 'not.h5')
    with h5py.File(tmp_path / 'keras3.h5', 'w') as h5:
        h5.create_group('layers')
    assert 'no Keras 2 weights in it' in _one_line_error(tmp_path / 'keras3.h5')


def test_import_weights_writes_weights_that_runs_accept(keras_h5, imported, tmp_path):
    result = run_cli('import-weights', 'iguane', keras_h5, env={'XDG_CACHE_HOME': str(tmp_path)})
    assert result.returncode == 0, result.stderr
    written = tmp_path / 'mrctprep' / 'weights' / 'iguane.pt'
    card = json.loads(written.with_suffix('.json').read_text())
    assert card['name'] == 'iguane'
    assert card['converted_from'] == {
        'file': 'iguane.h5',
        'sha256': hashlib.sha256(keras_h5.read_bytes()).hexdigest(),
        'format': 'Keras HDF5',
        'layout': 'channels-last kernels, permuted to torch with axes (4, 3, 0, 1, 2)',
    }
    weights = resolve_weights('iguane', explicit=written)
    assert weights.sha256 == hashlib.sha256(written.read_bytes()).hexdigest()
    state = weights.load_state_dict()
    assert all(torch.equal(state[k], v) for k, v in imported.state_dict().items())


def test_import_weights_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    (tmp_path / 'broken.h5').write_bytes(b'\x89HDF\r\n\x1a\n truncated')
    output = tmp_path / 'out' / 'iguane.pt'
    assert (
        run(['import-weights', 'iguane', str(tmp_path / 'broken.h5'), '--output', str(output)])
        == 126
    )
    stderr = capsys.readouterr().err
    assert stderr.startswith('mrctprep: error: ')
    assert stderr.count('\n') == 1 and 'broken.h5' in stderr
    assert not output.parent.exists()
