"""CTFlow's network: invertibility, log-determinant, ActNorm's initialisation, parameter count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrctprep.models.ctflow import (
    PAPER_SIZE,
    SIZES,
    CTFlow,
    CTFlowSize,
    count_parameters,
    hu_to_network,
    network_to_hu,
)
from mrctprep.models.ctflow_inference import harmonize_volume
from mrctprep.models.ctflow_layers import ActNorm
from mrctprep.models.weights import bundled_card

#: Same structure as the paper's, small enough for a Jacobian of every pixel.
TINY = CTFlowSize(
    rrdb_blocks=2, features=8, growth=4, flow_steps=2, stacked_blocks=(0, 1), hidden_channels=8
)


def _trained_looking(size: CTFlowSize, source: torch.Tensor, reference: torch.Tensor) -> CTFlow:
    """A model past ActNorm's initialisation whose zero-initialised convolutions are not zero
    (a fresh flow's couplings are constant, which would hide errors in their inverse)."""
    torch.manual_seed(3)
    model = CTFlow(size).to(source.dtype)
    model.train()
    model.encode(source, reference)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(('.logs', '.bias', '.weight')) and parameter.dim() != 2:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def test_encode_then_decode_returns_the_reference():
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(2, 1, 32, 32, generator=generator)
    reference = (source + 0.1 * torch.randn(2, 1, 32, 32, generator=generator)).clamp(0, 1)
    model = _trained_looking(TINY, source, reference)
    with torch.no_grad():
        latents, _ = model.encode(source, reference)
        decoded = model.decode(source, latents)
    assert [tuple(latent.shape) for latent in latents] == model.latent_shapes(2, 32, 32)
    assert [latent.shape[1] for latent in latents] == [2, 4, 16]
    assert (decoded - reference).abs().max().item() < 1e-4


def test_summed_log_determinant_is_the_jacobians():
    torch.manual_seed(1)
    # ActNorm initialises on a batch of four: one 1x1 pixel at level 3 has no variance
    sources = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    model = _trained_looking(TINY, sources, torch.rand(4, 1, 8, 8, dtype=torch.float64))
    source, reference = sources[:1], torch.rand(1, 1, 8, 8, dtype=torch.float64)

    conditions = model.conditions(source)

    def latents_of(flat: torch.Tensor) -> torch.Tensor:
        latents, _ = model.flowUpsamplerNet.encode(flat.view(1, 1, 8, 8), conditions)
        return torch.cat([latent.flatten() for latent in latents])

    jacobian = torch.autograd.functional.jacobian(latents_of, reference.flatten(), vectorize=True)
    assert jacobian.shape == (64, 64)
    _, logdet = model.encode(source, reference)
    expected = torch.linalg.slogdet(jacobian)[1]
    assert logdet.item() == pytest.approx(expected.item(), abs=1e-8)
    assert abs(logdet.item()) > 1.0  # a map that changes volume, not the identity


def test_actnorm_initialises_to_zero_mean_unit_variance_on_its_first_batch():
    generator = torch.Generator().manual_seed(2)
    batch = 5.0 + 3.0 * torch.randn(4, 3, 16, 16, generator=generator)
    batch[:, 1] *= 10.0
    actnorm = ActNorm(3).train()
    out, logdet = actnorm(batch, torch.zeros(4))
    assert out.mean(dim=(0, 2, 3)).abs().max().item() < 1e-5
    assert out.var(dim=(0, 2, 3), unbiased=False).sub(1).abs().max().item() < 1e-4
    # the initialisation happens once: a second batch is scaled with the same parameters
    second, _ = actnorm(batch + 1.0, torch.zeros(4))
    assert second.mean(dim=(0, 2, 3)).abs().min().item() > 0.01
    assert logdet[0].item() == pytest.approx(actnorm.logs.sum().item() * 256, rel=1e-6)


def _conv(in_channels: int, out_channels: int, kernel: int, bias: bool = True) -> int:
    return in_channels * out_channels * kernel * kernel + (out_channels if bias else 0)


def _coupling_network(in_channels: int, out_channels: int, hidden: int) -> int:
    # 3x3 conv (no bias) + ActNorm, 1x1 conv (no bias) + ActNorm, zero conv 3x3 + its logs
    return (
        _conv(in_channels, hidden, 3, bias=False)
        + 2 * hidden
        + _conv(hidden, hidden, 1, bias=False)
        + 2 * hidden
        + _conv(hidden, out_channels, 3)
        + out_channels
    )


def paper_parameter_count() -> int:
    """The paper size's parameters from the layer formulas (section 3 of the design note)."""
    nf, gc, hidden = 64, 32, 64
    dense_block = sum(_conv(nf + i * gc, gc, 3) for i in range(4)) + _conv(nf + 4 * gc, nf, 3)
    rrdb_net = (
        _conv(1, nf, 3) + 14 * 3 * dense_block + 2 * _conv(nf, nf, 3) + _conv(nf, 1, 3)
    )  # conv_first, trunk, trunk_conv and HRconv, conv_last
    condition = 5 * nf  # `last` and blocks 1, 5, 9, 13
    flow = 0
    channels = 1
    for level in (1, 2, 3):
        channels *= 4
        step = 2 * channels + channels * channels  # ActNorm, 1x1 conv
        coupling = _coupling_network(condition, 2 * channels, hidden) + _coupling_network(
            channels // 2 + condition, 2 * (channels - channels // 2), hidden
        )
        flow += 2 * step + 16 * (step + coupling)
        if level < 3:
            flow += _conv(channels // 2, channels, 3) + channels  # split prior + logs
            channels //= 2
    return rrdb_net + flow


def test_paper_size_parameter_count_follows_from_the_architecture():
    expected = paper_parameter_count()
    assert count_parameters(CTFlow(PAPER_SIZE)) == expected
    assert expected == 29_172_817  # the figure the model card prints


def test_model_card_prints_the_paper_size_and_its_parameter_count():
    card = bundled_card('ctflow')
    assert card['architecture']['paper_parameters'] == paper_parameter_count()
    for name, size in SIZES.items():
        # the card lists what differs between sizes; L = 3 and the 2 transition steps are fixed
        expected = {key: value for key, value in size.as_dict().items()}
        expected['stacked_blocks'] = list(size.stacked_blocks)
        del expected['levels'], expected['transition_steps']
        assert card['architecture']['sizes'][name] == expected


def test_volume_harmonization_keeps_the_grid_and_what_lies_outside_the_window():
    generator = torch.Generator().manual_seed(4)
    hu = (torch.rand(20, 13, 3, generator=generator) * 600 - 300).numpy()
    hu[2, 3, 1] = 1500.0  # bone above the window
    hu[5, 5, 0] = -2048.0  # padding below it
    torch.manual_seed(5)
    model = CTFlow(TINY).train()
    model.encode(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))  # ActNorm's initialisation
    mean_like = harmonize_volume(model, hu, tau=0.0, samples=1, batch=2)
    assert mean_like.hu.shape == hu.shape and mean_like.std is None
    assert mean_like.hu[2, 3, 1] == 1500.0 and mean_like.hu[5, 5, 0] == -2048.0
    assert np.array_equal(harmonize_volume(model, hu, tau=0.0).hu, mean_like.hu)
    # tau 0 is the flow's decoding of all-zero latents, slice by slice
    padded = torch.nn.functional.pad(hu_to_network(torch.from_numpy(hu[:, :, 2])), (0, 3, 0, 4))
    with torch.no_grad():
        zeros = [torch.zeros(s) for s in model.latent_shapes(1, 24, 16)]
        expected = network_to_hu(model.decode(padded[None, None], zeros))[0, 0, :20, :13]
    inside = (hu[:, :, 2] >= -1024) & (hu[:, :, 2] <= 476)
    assert np.allclose(mean_like.hu[:, :, 2][inside], expected.numpy()[inside], atol=1e-3)
    sampled = harmonize_volume(model, hu, tau=0.8, samples=4, seed=1)
    assert sampled.std is not None and sampled.std[inside].min() >= 0.0
    assert sampled.std[inside].mean() > 1.0 and sampled.std[2, 3, 1] == 0.0
    again = harmonize_volume(model, hu, tau=0.8, samples=4, seed=1)
    assert np.array_equal(again.hu, sampled.hu)  # seeded
