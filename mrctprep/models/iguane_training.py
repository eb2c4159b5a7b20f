"""IGUANe's many-to-one CycleGAN training (Roca et al., 2025), as a :class:`TrainingTask`.

One universal generator ``G`` maps every source site to the reference site; each source site
``i`` has its own backward generator ``F_i`` and discriminators ``D_ref,i`` (real reference vs
``G(source_i)``) and ``D_src,i`` (real source_i vs ``F_i(reference)``). Images are mr-preproc's
model inputs (median 500, cropped MNI), handled in IGUANe's network space with the background
as the sentinel -1 (for augmentation and masks) and set to 0 before any network sees it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nb
import numpy as np
import numpy.typing as npt
import torch
from nibabel.dataobj_images import DataobjImage
from scipy import ndimage
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mrctprep.core.devices import training_precision
from mrctprep.imaging.intensity import SIZE_MULTIPLE
from mrctprep.models.iguane import IguaneDiscriminator, IguaneGenerator, to_network_space
from mrctprep.models.inference import Shape3D
from mrctprep.models.memory import (
    StepMemory,
    saved_bytes_per_voxel,
    trained_parameter_bytes,
)

BACKGROUND = -1.0
LEARNING_RATE = 2e-4
FINAL_LEARNING_RATE = 2e-5
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-7  # Keras' default, as upstream
CYCLE_WEIGHT = 30.0
IDENTITY_WEIGHT = 15.0
ROTATION_PROBABILITY = 0.5
MAX_ROTATION_DEGREES = 10.0
MAX_SHIFT_VOXELS = 5
DISCRIMINATOR_PAIRS = 4  # per site and step: two pairs train each discriminator
DEFAULT_STEPS = 100 * 200
AGE_BIN_YEARS = 10.0
CACHED_VOLUMES_GB = 4.0
#: A generator step runs six generator passes with gradients: G(src), F(ref), G(F(ref)),
#: F(G(src)), G(ref), F(src); and two discriminator passes, on G(src) and F(ref).
GENERATOR_PASSES, DISCRIMINATOR_PASSES = 6, 2
#: While the backward pass runs, the gradients of the activations live beside the saved ones;
#: and torch's runtime (oneDNN's primitive caches, the allocator's slack) takes a fixed share.
#: Fitted to the peaks of steps at 32^3 and 64^3 crops on a CPU: peak = resident before
#: + 2.0 x saved activations + networks + images + 256 MB, within 5 % at both sizes.
BACKWARD_OVERHEAD = 2.0
RUNTIME_BYTES = 256 * 2**20

#: An image in IGUANe's network space, background at the sentinel -1.
Volume = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TrainingImage:
    """One model input (``desc-norm`` T1w) and what harmonization needs to know about it."""

    path: Path
    site: str
    age: float | None = None


@dataclass(frozen=True)
class IguaneTrainingSettings:
    steps: int = DEFAULT_STEPS
    #: Random crops of this size (each divisible by 16); None trains on whole volumes.
    patch_size: Shape3D | None = None
    device: str = 'cpu'
    seed: int = 0
    #: Pair reference and source images of the same age bin (needs every age).
    age_matched: bool = True
    #: Multiplies the generators' Glorot-initialised 1x1 heads (1: upstream). Upstream's head
    #: starts every generator adding a residual of about +-0.7 (350 on the median-500 scale)
    #: that Adam at 2e-4 needs thousands of steps to undo; 0.1 starts each generator near, but
    #: not at, the identity (at exactly the identity the L1 terms' kink holds it there).
    head_scale: float = 1.0


def training_step_memory(
    settings: IguaneTrainingSettings,
    *,
    image_shape: Shape3D,
    image_count: int,
    source_sites: int,
) -> StepMemory:
    """The memory of a training step, before any image is loaded: the activations the
    generator step keeps for its backward pass (the largest part; the discriminator step keeps
    far fewer), the networks with their gradients and Adam's moments, and the image cache."""
    generator = IguaneGenerator().to(settings.device)
    discriminator = IguaneDiscriminator().to(settings.device)
    saved_per_voxel = GENERATOR_PASSES * saved_bytes_per_voxel(
        generator, device=settings.device
    ) + DISCRIMINATOR_PASSES * saved_bytes_per_voxel(discriminator, device=settings.device)
    volume_bytes = math.prod(image_shape) * np.dtype(np.float32).itemsize
    cached = min(image_count * volume_bytes, int(CACHED_VOLUMES_GB * 2**30) + volume_bytes)
    networks = trained_parameter_bytes(generator) * (1 + source_sites)
    networks += trained_parameter_bytes(discriminator) * 2 * source_sites
    return StepMemory(
        saved_per_voxel * BACKWARD_OVERHEAD,
        {'networks and optimisers': networks, 'images': cached, 'torch runtime': RUNTIME_BYTES},
    )


def load_network_space(path: Path) -> Volume:
    """A median-500 image as ``I / 500 - 1`` with the background at the sentinel -1."""
    image = nb.load(path)
    # nibabel's load() is typed for any file-based image; only images with voxels come here
    assert isinstance(image, DataobjImage)
    network_input, brain = to_network_space(np.asanyarray(image.dataobj, np.float32))
    network_input[~brain] = BACKGROUND
    return network_input


def age_bin_probabilities(
    reference_counts: npt.NDArray[np.integer[Any]], source_counts: npt.NDArray[np.integer[Any]]
) -> npt.NDArray[np.float64]:
    """Sampling weights of age bins such that reference and source draws share a bin.

    IGUANe's ``harm_probas``: start from both normalised histograms; visit the bins in
    ascending order of their smaller count, all but the last; fix each visited bin by giving
    the side with the larger count the other side's probability, and spread the difference
    over that side's unfixed bins in proportion to their probabilities. Both sides then agree.

    >>> age_bin_probabilities(np.array([4, 4, 2]), np.array([0, 5, 5])).round(3).tolist()
    [0.0, 0.667, 0.333]
    """
    sides: list[npt.NDArray[np.float64]] = [
        np.asarray(c, np.float64) / np.sum(c) for c in (reference_counts, source_counts)
    ]
    smaller = np.minimum(reference_counts, source_counts)
    unfixed = set(range(len(smaller)))
    for bin_index in np.argsort(smaller, kind='stable')[:-1]:
        unfixed.discard(bin_index)
        larger = 0 if reference_counts[bin_index] > source_counts[bin_index] else 1
        side, other = sides[larger], sides[1 - larger]
        difference = side[bin_index] - other[bin_index]
        side[bin_index] = other[bin_index]
        rest = sorted(unfixed)
        if rest and side[rest].sum() > 0:
            side[rest] += difference * side[rest] / side[rest].sum()
    return sides[0] / float(sides[0].sum())


class AgeBins(NamedTuple):
    """Age bins to draw from, and the bin of each reference and each source image."""

    probabilities: npt.NDArray[np.float64]
    reference_bins: npt.NDArray[np.intp]
    source_bins: npt.NDArray[np.intp]

    @classmethod
    def of(
        cls, reference: Sequence[TrainingImage], source: Sequence[TrainingImage]
    ) -> AgeBins | None:
        """Bins of :data:`AGE_BIN_YEARS`; None unless every image has an age."""
        reference_ages = [image.age for image in reference if image.age is not None]
        source_ages = [image.age for image in source if image.age is not None]
        if len(reference_ages) < len(reference) or len(source_ages) < len(source):
            return None
        ages = reference_ages + source_ages
        low = np.floor(min(ages) / AGE_BIN_YEARS) * AGE_BIN_YEARS
        edges = np.arange(low, max(ages) + AGE_BIN_YEARS, AGE_BIN_YEARS)
        reference_bins = np.digitize(reference_ages, edges) - 1
        source_bins = np.digitize(source_ages, edges) - 1
        probabilities = age_bin_probabilities(
            np.bincount(reference_bins, minlength=len(edges)),
            np.bincount(source_bins, minlength=len(edges)),
        )
        return cls(probabilities, reference_bins, source_bins)


class PairSampler:
    """Draws (reference, source) image pairs of one source site, age-matched when asked."""

    def __init__(
        self,
        reference: Sequence[TrainingImage],
        source: Sequence[TrainingImage],
        *,
        age_matched: bool,
    ) -> None:
        self.reference, self.source = list(reference), list(source)
        self.bins = AgeBins.of(self.reference, self.source) if age_matched else None

    def draw(self, rng: np.random.Generator) -> tuple[TrainingImage, TrainingImage]:
        if self.bins is None:
            return (
                self.reference[rng.integers(len(self.reference))],
                self.source[rng.integers(len(self.source))],
            )
        probabilities, reference_bins, source_bins = self.bins
        chosen = rng.choice(len(probabilities), p=probabilities)
        reference = rng.choice(np.flatnonzero(reference_bins == chosen))
        source = rng.choice(np.flatnonzero(source_bins == chosen))
        return self.reference[reference], self.source[source]


def augment(volume: Volume, rng: np.random.Generator) -> Volume:
    """IGUANe's augmentation in network space: with p = 0.5 a rotation of U(-10, 10) degrees
    in one random plane (cubic spline, filled with -1), then an integer shift of U{-5..5}
    voxels per axis (filled with -1)."""
    if rng.random() < ROTATION_PROBABILITY:
        plane = [(0, 1), (0, 2), (1, 2)][rng.integers(3)]
        angle = rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
        volume = ndimage.rotate(
            volume, angle, axes=plane, reshape=False, order=3, mode='constant', cval=BACKGROUND
        )
    shifted = volume
    for axis, shift in enumerate(rng.integers(-MAX_SHIFT_VOXELS, MAX_SHIFT_VOXELS + 1, size=3)):
        if shift == 0:
            continue
        shifted = np.roll(shifted, shift, axis=axis)
        refill = [slice(None)] * 3
        refill[axis] = slice(0, shift) if shift > 0 else slice(shift, None)
        shifted[tuple(refill)] = BACKGROUND
    return shifted


def random_patch(volume: Volume, patch_size: Shape3D | None, rng: np.random.Generator) -> Volume:
    """An augmented training sample: the whole volume, or a patch centred on a random brain
    voxel. A patch is augmented with a margin around it, so that it is rotated and shifted as
    a piece of the whole volume would be, then cut to size."""
    if patch_size is None:
        return augment(volume, rng)
    margin = int(np.ceil(0.1 * max(patch_size))) + MAX_SHIFT_VOXELS
    centre = _random_brain_voxel(volume, rng)
    box = np.full([p + 2 * margin for p in patch_size], BACKGROUND, np.float32)
    source, target = [], []
    for size, p, c in zip(volume.shape, patch_size, centre, strict=True):
        start = int(np.clip(c - p // 2, 0, max(size - p, 0))) - margin
        low, high = max(start, 0), min(start + p + 2 * margin, size)
        source.append(slice(low, high))
        target.append(slice(low - start, high - start))
    box[tuple(target)] = volume[tuple(source)]
    augmented = augment(box, rng)
    return np.ascontiguousarray(augmented[(slice(margin, -margin),) * 3])


def _random_brain_voxel(volume: Volume, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """A uniformly drawn brain voxel (by rejection: the brain fills a good part of the crop,
    and listing its millions of voxels at every draw would cost more than the step)."""
    for _ in range(1000):
        voxel = rng.integers(0, volume.shape)
        if volume[tuple(voxel)] > BACKGROUND:
            return voxel
    return np.array(volume.shape) // 2


def _generator(head_scale: float) -> IguaneGenerator:
    """A fresh generator whose 1x1 head is ``head_scale`` times upstream's initialisation."""
    generator = IguaneGenerator()
    with torch.no_grad():
        generator.head.weight.mul_(head_scale)
    return generator


class MaskedBatch(NamedTuple):
    """Images in network space with the background set to 0, and their brain masks (1 in the
    brain, else 0), each ``(count, 1, ...)``."""

    images: torch.Tensor
    masks: torch.Tensor


#: An optimiser and the schedule of its learning rate.
ScheduledOptimiser = tuple[torch.optim.Adam, LambdaLR]


class IguaneTraining:
    """IGUANe's training step, state and schedule (see the module docstring)."""

    def __init__(
        self,
        reference: Sequence[TrainingImage],
        sources: Mapping[str, Sequence[TrainingImage]],
        settings: IguaneTrainingSettings,
    ) -> None:
        if settings.patch_size and any(p % SIZE_MULTIPLE for p in settings.patch_size):
            raise ValueError(
                f'patch sizes must be multiples of {SIZE_MULTIPLE}: {settings.patch_size}'
            )
        self.settings = settings
        self.device = torch.device(settings.device)
        self.site_names = sorted(sources)
        self.rng = np.random.default_rng(settings.seed)
        torch.manual_seed(settings.seed)
        self.samplers = {
            site: PairSampler(reference, sources[site], age_matched=settings.age_matched)
            for site in self.site_names
        }
        self.volumes: dict[Path, Volume] = {}
        self.generator = _generator(settings.head_scale).to(self.device)
        # ModuleDict keys must be identifiers: sites are numbered in sorted order
        self.backward = nn.ModuleDict(
            {f'site{i}': _generator(settings.head_scale) for i in self._indices}
        )
        self.disc_reference = nn.ModuleDict(
            {f'site{i}': IguaneDiscriminator() for i in self._indices}
        )
        self.disc_source = nn.ModuleDict(
            {f'site{i}': IguaneDiscriminator() for i in self._indices}
        )
        for modules in (self.backward, self.disc_reference, self.disc_source):
            modules.to(self.device)
        sites = len(self.site_names)
        self.optimisers = {'generator': self._adam(self.generator, settings.steps * sites)}
        roles = {
            'backward': self.backward,
            'disc_reference': self.disc_reference,
            'disc_source': self.disc_source,
        }
        for i in self._indices:
            for role, modules in roles.items():
                self.optimisers[f'{role}{i}'] = self._adam(modules[f'site{i}'], settings.steps)
        # float16 on CUDA needs loss scaling; bfloat16 and float32 do not
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.device.type == 'cuda')

    @property
    def _indices(self) -> range:
        return range(len(self.site_names))

    def _adam(self, module: nn.Module, updates: int) -> ScheduledOptimiser:
        optimiser = torch.optim.Adam(
            module.parameters(), lr=LEARNING_RATE, betas=ADAM_BETAS, eps=ADAM_EPSILON
        )
        decay = 1 - FINAL_LEARNING_RATE / LEARNING_RATE
        schedule = LambdaLR(
            optimiser, lambda update: 1 - decay * min(update / max(updates, 1), 1.0)
        )
        return optimiser, schedule

    def _volume(self, image: TrainingImage) -> Volume:
        """The image in network space, from a cache of the most recently used volumes that
        holds at most ``CACHED_VOLUMES_GB`` (a multi-site study does not fit in memory)."""
        if image.path in self.volumes:
            self.volumes[image.path] = self.volumes.pop(image.path)  # most recent last
            return self.volumes[image.path]
        volume = load_network_space(image.path)
        while self.volumes and (len(self.volumes) + 1) * volume.nbytes > CACHED_VOLUMES_GB * 2**30:
            self.volumes.pop(next(iter(self.volumes)))
        self.volumes[image.path] = volume
        return volume

    def _draw(self, site: str, count: int) -> tuple[MaskedBatch, MaskedBatch]:
        """``count`` augmented (reference, source) pairs, as a reference and a source batch."""
        references, sources = [], []
        for _ in range(count):
            reference, source = self.samplers[site].draw(self.rng)
            patch_size = self.settings.patch_size
            references.append(random_patch(self._volume(reference), patch_size, self.rng))
            sources.append(random_patch(self._volume(source), patch_size, self.rng))
        return self._masked_batch(references), self._masked_batch(sources)

    def _masked_batch(self, volumes: Sequence[Volume]) -> MaskedBatch:
        batch = torch.from_numpy(np.stack(volumes)[:, None]).to(self.device)
        mask = (batch > BACKGROUND).float()
        return MaskedBatch(batch * mask, mask)

    def train_step(self) -> dict[str, float]:
        """One step: every source site once, in a fresh random order; losses averaged."""
        totals: dict[str, float] = {}
        for site_index in self.rng.permutation(len(self.site_names)):
            for key, value in self._site_step(int(site_index)).items():
                totals[key] = totals.get(key, 0.0) + value / len(self.site_names)
        return totals

    def _site_step(self, i: int) -> dict[str, float]:
        """Source site ``i``'s discriminators, then G and F_i, each trained on fresh pairs."""
        site = self.site_names[i]
        losses = self._train_discriminators(i, *self._draw(site, DISCRIMINATOR_PAIRS))
        return losses | self._train_generators(i, *self._draw(site, 1))

    def _train_discriminators(
        self, i: int, reference_batch: MaskedBatch, source_batch: MaskedBatch
    ) -> dict[str, float]:
        """D_ref,i on ref[2:4] vs G(src[2:4]); D_src,i on src[0:2] vs F_i(ref[0:2])."""
        key = f'site{i}'
        references, reference_masks = reference_batch
        sources, source_masks = source_batch
        with torch.no_grad(), training_precision(self.device.type):
            fake_references = self.generator(sources[2:4]) * source_masks[2:4]
            fake_sources = self.backward[key](references[0:2]) * reference_masks[0:2]
        losses = {}
        for name, discriminator, real, fake in (
            ('disc_reference', self.disc_reference[key], references[2:4], fake_references),
            ('disc_source', self.disc_source[key], sources[0:2], fake_sources),
        ):
            optimiser, schedule = self.optimisers[f'{name}{i}']
            optimiser.zero_grad(set_to_none=True)
            with training_precision(self.device.type):
                loss = ((discriminator(real) - 1) ** 2).mean() + (discriminator(fake) ** 2).mean()
            torch.autograd.backward(self.scaler.scale(loss))
            self.scaler.step(optimiser)
            schedule.step()
            losses[f'loss_{name}'] = loss.item()
        return losses

    def _train_generators(
        self, i: int, reference_pair: MaskedBatch, source_pair: MaskedBatch
    ) -> dict[str, float]:
        """G and F_i on one pair, with site ``i``'s discriminators frozen meanwhile."""
        discriminators = (self.disc_reference[f'site{i}'], self.disc_source[f'site{i}'])
        for discriminator in discriminators:
            discriminator.requires_grad_(False)
        updated = (self.optimisers['generator'], self.optimisers[f'backward{i}'])
        for optimiser, _ in updated:
            optimiser.zero_grad(set_to_none=True)
        losses = self._generator_losses(i, reference_pair, source_pair)
        # L_G and L_F share the cycle term; G's other terms do not depend on F nor F's on G, so
        # L_G + L_F - 30 cycle has L_G's gradient for G and L_F's for F: one backward pass
        both = losses['loss_G'] + losses['loss_F'] - CYCLE_WEIGHT * losses['cycle']
        torch.autograd.backward(self.scaler.scale(both))
        for optimiser, schedule in updated:
            self.scaler.step(optimiser)
            schedule.step()
        self.scaler.update()
        for discriminator in discriminators:
            discriminator.requires_grad_(True)
        return {name: loss.item() for name, loss in losses.items()}

    def _generator_losses(
        self, i: int, reference_pair: MaskedBatch, source_pair: MaskedBatch
    ) -> dict[str, torch.Tensor]:
        """L_G and L_F, and their cycle and identity terms; every generated image is masked by
        its input's mask."""
        key = f'site{i}'
        backward = self.backward[key]
        reference, reference_mask = reference_pair
        source, source_mask = source_pair
        with training_precision(self.device.type):
            fake_reference = self.generator(source) * source_mask
            fake_source = backward(reference) * reference_mask
            cycled_reference = self.generator(fake_source) * reference_mask
            cycled_source = backward(fake_reference) * source_mask
            identity_reference = self.generator(reference) * reference_mask
            identity_source = backward(source) * source_mask
            adversarial_g = ((self.disc_reference[key](fake_reference) - 1) ** 2).mean()
            adversarial_f = ((self.disc_source[key](fake_source) - 1) ** 2).mean()
        cycle = (reference - cycled_reference).abs().mean() + (source - cycled_source).abs().mean()
        identity_g = (reference - identity_reference).abs().mean()
        identity_f = (source - identity_source).abs().mean()
        return {
            'loss_G': adversarial_g + CYCLE_WEIGHT * cycle + IDENTITY_WEIGHT * identity_g,
            'loss_F': adversarial_f + CYCLE_WEIGHT * cycle + IDENTITY_WEIGHT * identity_f,
            'cycle': cycle,
            'identity_G': identity_g,
            'identity_F': identity_f,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            'generator': self.generator.state_dict(),
            'backward': self.backward.state_dict(),
            'disc_reference': self.disc_reference.state_dict(),
            'disc_source': self.disc_source.state_dict(),
            'optimisers': {
                name: (optimiser.state_dict(), schedule.state_dict())
                for name, (optimiser, schedule) in self.optimisers.items()
            },
            'scaler': self.scaler.state_dict(),
            'rng': self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state['generator'])
        self.backward.load_state_dict(state['backward'])
        self.disc_reference.load_state_dict(state['disc_reference'])
        self.disc_source.load_state_dict(state['disc_source'])
        for name, (optimiser, schedule) in self.optimisers.items():
            optimiser.load_state_dict(state['optimisers'][name][0])
            schedule.load_state_dict(state['optimisers'][name][1])
        self.scaler.load_state_dict(state['scaler'])
        self.rng.bit_generator.state = state['rng']
