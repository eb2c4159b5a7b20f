"""Training pieces of EfficientSCN as the authors' code defines them: the losses, the
norm-adaptive gradient clipping, the weight EMA, the augmentation, and the training task of
either stage for the shared loop (:mod:`mrctprep.models.training`): the localization net on
whole scans at 6 mm with the organs merged (Adam 1e-5, gamma augmentation too), the SCN on
crops around the organs (Adam 1e-4).

Spatial augmentation is upstream's: an affine part (translation +-20 mm, rotation +-0.35 rad per
axis, isotropic scale 0.8-1.2, per-axis scale 0.9-1.1) composed with an elastic deformation
(displacements of up to 15 mm on an 8 x 8 x 8 control grid over the output, a quadratic
B-spline at half resolution, then linear), both in millimetres of the training grid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional

from mrctprep.models.efficientscn import (
    FLARE_LABELS,
    LOCALIZATION_MODEL,
    SEGMENTATION_MODEL,
    LocalizationNet,
    SpatialConfigurationNet,
)

L2_FACTOR = 1e-6
SCN_LEARNING_RATE = 1e-4
LOCALIZATION_LEARNING_RATE = 1e-5
GAMMA_RANGE = (0.8, 1.2)
EMA_DECAY = 0.999
CLIP_INITIAL_NORM, CLIP_FACTOR, CLIP_MOMENTUM = 10.0, 5.0, 0.01
ELASTIC_CONTROL_POINTS, ELASTIC_MAX_MM, ELASTIC_SPLINE_ORDER = 8, 15.0, 2


def generalized_dice_loss(probabilities: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
    """Sudre et al.'s generalized Dice as upstream writes it: class weights
    ``1 / ((sum g)^2 + 1e-4)``, squared probabilities in the denominator, batch mean."""
    axes = tuple(range(2, probabilities.dim()))
    weights = 1.0 / (one_hot.sum(dim=axes) ** 2 + 1e-4)
    numerator = (weights * (one_hot * probabilities).sum(dim=axes)).sum(dim=1)
    denominator = (weights * (one_hot + probabilities**2).sum(dim=axes)).sum(dim=1)
    return (1 - 2 * (numerator + 1e-8) / (denominator + 1e-8)).mean()


def l2_penalty(network: nn.Module) -> torch.Tensor:
    """``1e-6 * sum ||W||^2`` over the convolution kernels (not the biases)."""
    kernels = [p for name, p in network.named_parameters() if name.endswith('weight')]
    return L2_FACTOR * sum((kernel**2).sum() for kernel in kernels)  # type: ignore[return-value]


def scn_loss(
    network: SpatialConfigurationNet, image: torch.Tensor, one_hot: torch.Tensor
) -> dict[str, torch.Tensor]:
    """GD on the fused probabilities + BCE of both branches' sigmoids + L2, weights 1."""
    outputs = network.outputs(image)
    terms = {
        'dice': generalized_dice_loss(outputs.probabilities, one_hot),
        'bce_local': functional.binary_cross_entropy_with_logits(outputs.local_logits, one_hot),
        'bce_spatial': functional.binary_cross_entropy_with_logits(
            outputs.spatial_logits, one_hot
        ),
        'l2': l2_penalty(network),
    }
    terms['loss'] = sum(terms.values())  # type: ignore[assignment]
    return terms


def localization_loss(
    network: LocalizationNet, image: torch.Tensor, one_hot: torch.Tensor
) -> dict[str, torch.Tensor]:
    """GD on the softmax of the (background, foreground) logits + L2."""
    terms = {
        'dice': generalized_dice_loss(torch.softmax(network(image), dim=1), one_hot),
        'l2': l2_penalty(network),
    }
    terms['loss'] = sum(terms.values())  # type: ignore[assignment]
    return terms


class AdaptiveGradientClipper:
    """Clip the global gradient norm at 5 m, m a running mean of the (clipped) norms:
    ``m <- 0.01 min(norm, 5 m) + 0.99 m`` when the norm is finite (m starts at 10)."""

    def __init__(self) -> None:
        self.mean_norm = CLIP_INITIAL_NORM

    def clip(self, parameters: list[nn.Parameter]) -> float:
        limit = CLIP_FACTOR * self.mean_norm
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, limit))
        if math.isfinite(norm):
            self.mean_norm = (
                CLIP_MOMENTUM * min(norm, limit) + (1 - CLIP_MOMENTUM) * self.mean_norm
            )
        return norm


def ema_decay(updates: int) -> float:
    """The decay of the weight average after ``n`` updates, ``min(0.999, (1 + n) / (10 + n))``
    as TensorFlow's ExponentialMovingAverage with ``num_updates``. The same as upstream's 0.999
    after 9,000 of its 100,000 steps; without the ramp the average of a run of a few hundred
    steps would still be mostly the random initialisation (0.999^240 = 0.79 of it).

    >>> [round(ema_decay(n), 4) for n in (0, 90, 9000)]
    [0.1, 0.91, 0.999]
    """
    return min(EMA_DECAY, (1 + updates) / (10 + updates))


def update_ema(average: nn.Module, network: nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * network``, parameter by parameter."""
    with torch.no_grad():
        for kept, current in zip(average.parameters(), network.parameters(), strict=True):
            kept.mul_(decay).add_(current.detach(), alpha=1 - decay)


def augment_intensity(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Both stages: add U(-0.2, 0.2), multiply by 1 + U(-0.2, 0.2), clip to [-1, 1]."""
    shift, scale = (torch.rand(2, generator=generator) * 0.4 - 0.2).tolist()
    augmented: torch.Tensor = ((image + shift) * (1 + scale)).clamp(-1.0, 1.0)
    return augmented


def augment_gamma(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Localization only: min-max normalise to [0, 1], raise to U(0.8, 1.2), map back."""
    low, high = image.min(), image.max()
    gamma = GAMMA_RANGE[0] + float(torch.rand(1, generator=generator)) * (
        GAMMA_RANGE[1] - GAMMA_RANGE[0]
    )
    unit = (image - low) / (high - low).clamp_min(1e-6)
    return unit**gamma * (high - low) + low


def random_affine_grid(
    shape: tuple[int, ...], spacing_mm: tuple[float, ...], generator: torch.Generator
) -> torch.Tensor:
    """A sampling grid (for ``grid_sample``) of a random rotation, scale and translation about
    the volume's centre, in upstream's ranges."""
    u = torch.rand(10, generator=generator, dtype=torch.float64) * 2 - 1
    angles = (u[:3] * 0.35).tolist()
    matrix = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles):
        rotation = torch.eye(3, dtype=torch.float64)
        i, j = [a for a in range(3) if a != axis]
        c, s = math.cos(angle), math.sin(angle)
        rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
        matrix = rotation @ matrix
    scale = (1 + 0.2 * u[3]) * (1 + 0.1 * u[4:7])
    matrix = matrix @ torch.diag(1 / scale)
    # grid units: [-1, 1] over each axis; 20 mm in those units per axis (x, y, z order)
    half_extent_mm = torch.tensor(
        [mm * size / 2 for mm, size in zip(spacing_mm, shape, strict=True)][::-1],
        dtype=torch.float64,
    )
    translation = u[7:10] * 20.0 / half_extent_mm
    theta = torch.cat([matrix, translation[:, None]], dim=1)[None].float()
    return functional.affine_grid(theta, [1, 1, *shape], align_corners=False)


def random_elastic_displacement(
    shape: tuple[int, ...], spacing_mm: tuple[float, ...], generator: torch.Generator
) -> torch.Tensor:
    """A displacement in ``grid_sample`` units, ``(1, *shape, 3)``: uniform random
    displacements of at most 15 mm at 8 x 8 x 8 control points spread over the volume, a
    quadratic B-spline of them at half resolution, linear interpolation to full."""
    control = torch.rand(
        (3, *(ELASTIC_CONTROL_POINTS,) * 3), generator=generator, dtype=torch.float64
    )
    control = (control * 2 - 1) * ELASTIC_MAX_MM
    half = [max(size // 2, 2) for size in shape]
    zoom = [h / ELASTIC_CONTROL_POINTS for h in half]
    # the random values are B-spline coefficients (no prefilter), as in a B-spline transform:
    # the field never exceeds them
    dense_half = np.stack([
        ndimage.zoom(
            c.numpy(), zoom, order=ELASTIC_SPLINE_ORDER, mode='grid-constant', grid_mode=True,
            prefilter=False,
        )
        for c in control
    ])  # fmt: skip
    dense = functional.interpolate(
        torch.from_numpy(dense_half)[None].float(), size=shape, mode='trilinear'
    )[0]
    # grid units: [-1, 1] over each axis, the last dimension in (x, y, z) = (W, H, D) order
    half_extent_mm = torch.tensor(
        [mm * size / 2 for mm, size in zip(spacing_mm, shape, strict=True)][::-1]
    )
    return (dense.flip(0).permute(1, 2, 3, 0) / half_extent_mm)[None]


@dataclass(frozen=True)
class TrainingSample:
    """One training input of a stage: network-intensity image, uint8 labels on its grid (FLARE
    labels for the SCN, merged organs for the localization), and its spacing per axis in mm."""

    image: torch.Tensor
    labels: torch.Tensor
    spacing_mm: tuple[float, float, float]


Loss = Callable[[Any, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Stage:
    """What differs between the two stages' training."""

    weights_name: str
    classes: int
    learning_rate: float
    loss: Loss
    gamma_augmentation: bool


SCN_STAGE = Stage(
    SEGMENTATION_MODEL, len(FLARE_LABELS), SCN_LEARNING_RATE, scn_loss, gamma_augmentation=False
)
LOCALIZATION_STAGE = Stage(
    LOCALIZATION_MODEL, 2, LOCALIZATION_LEARNING_RATE, localization_loss, gamma_augmentation=True
)


class StageTraining:
    """A stage's training task: Adam (the stage's rate unless one is given), batch 1,
    augmentation, adaptive clipping, EMA."""

    def __init__(
        self,
        network: nn.Module,
        samples: list[TrainingSample],
        stage: Stage,
        *,
        device: str,
        seed: int,
        augment: bool = True,
        learning_rate: float | None = None,
    ) -> None:
        self.network = network.to(device).train()
        self.average = copy.deepcopy(network).eval()
        self.samples, self.stage, self.device, self.augment = samples, stage, device, augment
        self.optimizer = torch.optim.Adam(
            network.parameters(), lr=learning_rate or stage.learning_rate
        )
        self.clipper = AdaptiveGradientClipper()
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(torch.randint(len(self.samples), (1,), generator=self.generator))
        sample = self.samples[index]
        image = sample.image[None, None].float()
        labels = sample.labels[None, None].float()
        if self.augment:
            shape, spacing = tuple(sample.image.shape), sample.spacing_mm
            grid = random_affine_grid(shape, spacing, self.generator)
            grid = grid + random_elastic_displacement(shape, spacing, self.generator)
            image = functional.grid_sample(image, grid, padding_mode='border', align_corners=False)
            labels = functional.grid_sample(labels, grid, mode='nearest', align_corners=False)
            if self.stage.gamma_augmentation:
                image = augment_gamma(image, self.generator)
            image = augment_intensity(image, self.generator)
        one_hot = functional.one_hot(labels[:, 0].long(), self.stage.classes)
        return image.to(self.device), one_hot.permute(0, 4, 1, 2, 3).float().to(self.device)

    def train_step(self) -> dict[str, float]:
        image, one_hot = self._batch()
        self.optimizer.zero_grad()
        terms = self.stage.loss(self.network, image, one_hot)
        terms['loss'].backward()  # type: ignore[no-untyped-call]
        norm = self.clipper.clip(list(self.network.parameters()))
        if math.isfinite(norm):  # as upstream's loss scaling, a non-finite step is skipped
            self.optimizer.step()
            update_ema(self.average, self.network, ema_decay(self.updates))
            self.updates += 1
        return {
            **{name: float(value.detach()) for name, value in terms.items()},
            'grad_norm': norm,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            'network': self.network.state_dict(),
            'average': self.average.state_dict(),
            'optimizer': self.optimizer.state_dict(),
            'clip_mean_norm': self.clipper.mean_norm,
            'generator': self.generator.get_state(),
            'updates': self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state['network'])
        self.average.load_state_dict(state['average'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.clipper.mean_norm = state['clip_mean_norm']
        self.generator.set_state(state['generator'])
        self.updates = state['updates']
