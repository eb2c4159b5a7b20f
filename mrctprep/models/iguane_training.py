"""IGUANe's many-to-one CycleGAN training (design note section 5), as a :class:`TrainingTask`.

One universal generator ``G`` maps every source site to the reference site; each source site
``i`` has its own backward generator ``F_i`` and discriminators ``D_ref,i`` (real reference vs
``G(source_i)``) and ``D_src,i`` (real source_i vs ``F_i(reference)``). Images are mr-preproc's
model inputs (median 500, cropped MNI), handled in IGUANe's network space with the background
as the sentinel -1 (for augmentation and masks) and set to 0 before any network sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from mrctprep.core.devices import fast_precision
from mrctprep.imaging.intensity import SIZE_MULTIPLE
from mrctprep.models.iguane import IguaneDiscriminator, IguaneGenerator, to_network_space

LOGGER = logging.getLogger('mrctprep.models')

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
    patch_size: tuple[int, int, int] | None = None
    device: str = 'cpu'
    seed: int = 0
    #: Pair reference and source images of the same age bin (needs every age).
    age_matched: bool = True


def load_network_space(path: Path) -> np.ndarray:
    """A median-500 image as ``I / 500 - 1`` with the background at the sentinel -1."""
    network_input, brain = to_network_space(np.asanyarray(nb.load(path).dataobj, np.float32))
    network_input[~brain] = BACKGROUND
    return network_input


def age_bin_probabilities(reference_counts: np.ndarray, source_counts: np.ndarray) -> np.ndarray:
    """Sampling weights of age bins such that reference and source draws share a bin.

    IGUANe's ``harm_probas``: start from both normalised histograms; visit the bins in
    ascending order of their smaller count, all but the last; fix each visited bin by giving
    the side with the larger count the other side's probability, and spread the difference
    over that side's unfixed bins in proportion to their probabilities. Both sides then agree.

    >>> age_bin_probabilities(np.array([4, 4, 2]), np.array([0, 5, 5])).round(3).tolist()
    [0.0, 0.667, 0.333]
    """
    sides = [np.asarray(c, float) / np.sum(c) for c in (reference_counts, source_counts)]
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
    return sides[0] / sides[0].sum()


class PairSampler:
    """Draws (reference, source) image pairs of one source site, age-matched when asked."""

    def __init__(
        self,
        reference: Sequence[TrainingImage],
        source: Sequence[TrainingImage],
        *,
        age_matched: bool,
    ):
        self.reference, self.source = list(reference), list(source)
        ages = [image.age for image in (*self.reference, *self.source)]
        self.bins = None
        if age_matched and all(age is not None for age in ages):
            low = np.floor(min(ages) / AGE_BIN_YEARS) * AGE_BIN_YEARS
            edges = np.arange(low, max(ages) + AGE_BIN_YEARS, AGE_BIN_YEARS)
            reference_bins = np.digitize([i.age for i in self.reference], edges) - 1
            source_bins = np.digitize([i.age for i in self.source], edges) - 1
            counts = len(edges)
            probabilities = age_bin_probabilities(
                np.bincount(reference_bins, minlength=counts),
                np.bincount(source_bins, minlength=counts),
            )
            self.bins = (probabilities, reference_bins, source_bins)

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


def augment(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def random_patch(
    volume: np.ndarray, patch_size: tuple[int, int, int] | None, rng: np.random.Generator
) -> np.ndarray:
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


def _random_brain_voxel(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn brain voxel (by rejection: the brain fills a good part of the crop,
    and listing its millions of voxels at every draw would cost more than the step)."""
    for _ in range(1000):
        voxel = rng.integers(0, volume.shape)
        if volume[tuple(voxel)] > BACKGROUND:
            return voxel
    return np.array(volume.shape) // 2


class IguaneTraining:
    """IGUANe's training step, state and schedule (see the module docstring)."""

    def __init__(
        self,
        reference: Sequence[TrainingImage],
        sources: Mapping[str, Sequence[TrainingImage]],
        settings: IguaneTrainingSettings,
    ):
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
        self.volumes: dict[Path, np.ndarray] = {}
        self.generator = IguaneGenerator().to(self.device)
        # ModuleDict keys must be identifiers: sites are numbered in sorted order
        self.backward = nn.ModuleDict({f'site{i}': IguaneGenerator() for i in self._indices})
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

    def _adam(self, module: nn.Module, updates: int):
        optimiser = torch.optim.Adam(
            module.parameters(), lr=LEARNING_RATE, betas=ADAM_BETAS, eps=ADAM_EPSILON
        )
        decay = 1 - FINAL_LEARNING_RATE / LEARNING_RATE
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda update: 1 - decay * min(update / max(updates, 1), 1.0)
        )
        return optimiser, schedule

    def _volume(self, image: TrainingImage) -> np.ndarray:
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

    def _draw(self, site: str, count: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """``count`` augmented (reference, source) pairs: for each side a ``(count, 1, ...)``
        batch with the background set to 0, and its brain mask (1 in the brain, else 0)."""
        references, sources = [], []
        for _ in range(count):
            reference, source = self.samplers[site].draw(self.rng)
            patch_size = self.settings.patch_size
            references.append(random_patch(self._volume(reference), patch_size, self.rng))
            sources.append(random_patch(self._volume(source), patch_size, self.rng))
        batches = []
        for volumes in (references, sources):
            batch = torch.from_numpy(np.stack(volumes)[:, None]).to(self.device)
            mask = (batch > BACKGROUND).float()
            batches.append((batch * mask, mask))
        return tuple(batches)

    def train_step(self) -> dict[str, float]:
        """One step: every source site once, in a fresh random order; losses averaged."""
        totals: dict[str, float] = {}
        for site_index in self.rng.permutation(len(self.site_names)):
            for key, value in self._site_step(int(site_index)).items():
                totals[key] = totals.get(key, 0.0) + value / len(self.site_names)
        return totals

    def _site_step(self, i: int) -> dict[str, float]:
        site, key = self.site_names[i], f'site{i}'
        backward = self.backward[key]
        disc_reference, disc_source = self.disc_reference[key], self.disc_source[key]
        precision = self.device.type

        # discriminators: D_ref on ref[2:4] vs G(src[2:4]); D_src on src[0:2] vs F(ref[0:2])
        (references, reference_masks), (sources, source_masks) = self._draw(
            site, DISCRIMINATOR_PAIRS
        )
        with torch.no_grad(), fast_precision(precision):
            fake_references = self.generator(sources[2:4]) * source_masks[2:4]
            fake_sources = backward(references[0:2]) * reference_masks[0:2]
        losses = {}
        for name, discriminator, real, fake in (
            ('disc_reference', disc_reference, references[2:4], fake_references),
            ('disc_source', disc_source, sources[0:2], fake_sources),
        ):
            optimiser, schedule = self.optimisers[f'{name}{i}']
            optimiser.zero_grad(set_to_none=True)
            with fast_precision(precision):
                loss = ((discriminator(real) - 1) ** 2).mean() + (discriminator(fake) ** 2).mean()
            self.scaler.scale(loss).backward()
            self.scaler.step(optimiser)
            schedule.step()
            losses[f'loss_{name}'] = loss.item()

        # generators G and F_i: one fresh pair; every generated image masked by its input's mask
        (reference, reference_mask), (source, source_mask) = self._draw(site, 1)
        disc_reference.requires_grad_(False)
        disc_source.requires_grad_(False)
        updated = (self.optimisers['generator'], self.optimisers[f'backward{i}'])
        for optimiser, _ in updated:
            optimiser.zero_grad(set_to_none=True)
        with fast_precision(precision):
            fake_reference = self.generator(source) * source_mask
            fake_source = backward(reference) * reference_mask
            cycled_reference = self.generator(fake_source) * reference_mask
            cycled_source = backward(fake_reference) * source_mask
            identity_reference = self.generator(reference) * reference_mask
            identity_source = backward(source) * source_mask
            adversarial_g = ((disc_reference(fake_reference) - 1) ** 2).mean()
            adversarial_f = ((disc_source(fake_source) - 1) ** 2).mean()
        cycle = (reference - cycled_reference).abs().mean() + (source - cycled_source).abs().mean()
        identity_g = (reference - identity_reference).abs().mean()
        identity_f = (source - identity_source).abs().mean()
        loss_g = adversarial_g + CYCLE_WEIGHT * cycle + IDENTITY_WEIGHT * identity_g
        loss_f = adversarial_f + CYCLE_WEIGHT * cycle + IDENTITY_WEIGHT * identity_f
        # L_G and L_F share the cycle term; G's other terms do not depend on F nor F's on G, so
        # L_G + L_F - 30 cycle has L_G's gradient for G and L_F's for F: one backward pass
        self.scaler.scale(loss_g + loss_f - CYCLE_WEIGHT * cycle).backward()
        for optimiser, schedule in updated:
            self.scaler.step(optimiser)
            schedule.step()
        self.scaler.update()
        disc_reference.requires_grad_(True)
        disc_source.requires_grad_(True)
        return {
            **losses,
            'loss_G': loss_g.item(),
            'loss_F': loss_f.item(),
            'cycle': cycle.item(),
            'identity_G': identity_g.item(),
            'identity_F': identity_f.item(),
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
