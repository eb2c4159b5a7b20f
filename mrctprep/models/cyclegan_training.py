"""CycleGAN training as pytorch-CycleGAN-and-pix2pix runs it (``--model cycle_gan``), as a
:class:`~mrctprep.models.training.TrainingTask`: domain A (DRRs) to domain B (real
radiographs) with ``G_A``, back with ``G_B``; discriminators ``D_A`` (real B vs G_A(A)) and
``D_B`` (real A vs G_B(B)); LSGAN losses, cycle L1 x 10, identity L1 x 0.5 x 10, a 50-image
pool of generated images for the discriminators, Adam 2e-4 (beta1 0.5), a constant learning
rate for the first half of the steps then a linear decay to zero; batch 1, unaligned random
pairs, each image resized to the load size, randomly cropped and flipped.

Every random choice (pairs, crops, flips, the pool) comes from the task's own generator, so
that a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.optim.lr_scheduler import LambdaLR

from mrctprep.core.derivatives import write_atomically
from mrctprep.core.devices import training_precision
from mrctprep.imaging.radiographs import Radiograph, histogram_wasserstein
from mrctprep.models.cyclegan import (
    SIZE_MULTIPLE,
    NLayerDiscriminator,
    ResnetGenerator,
    init_weights,
    translate,
)

LOAD_SIZE = 552
CROP_SIZE = 512
POOL_SIZE = 50
CYCLE_WEIGHT = 10.0
IDENTITY_WEIGHT = 0.5
LEARNING_RATE = 2e-4
ADAM_BETAS = (0.5, 0.999)
DEFAULT_STEPS = 200 * 1024  # upstream's 100 + 100 epochs of 1024 images
PREPROCESSING = ('resize_and_crop', 'crop')
#: An image as training draws crops from it (:func:`prepare`): [0, 1] as 16 bits.
TrainingImage = npt.NDArray[np.uint16]


@dataclass(frozen=True)
class CycleGANSettings:
    steps: int = DEFAULT_STEPS
    crop_size: int = CROP_SIZE
    #: the side images are resized to before cropping (``resize_and_crop``)
    load_size: int = LOAD_SIZE
    #: ``resize_and_crop`` (upstream's default) or ``crop`` (random crops of the image as is)
    preprocess: str = 'resize_and_crop'
    ngf: int = 64
    ndf: int = 64
    blocks: int = 9
    device: str = 'cpu'
    seed: int = 0
    #: write a validation panel (and score the held-out images) every this many steps
    validation_every: int = 500


class ImagePool:
    """Upstream's history of generated images: until full, every image is kept and shown;
    then with probability 1/2 the discriminator sees a stored image (replaced by the new one),
    else the new one."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        image = image.detach()
        if len(self.images) < self.size:
            self.images.append(image)
            return image
        if rng.random() > 0.5:
            index = int(rng.integers(self.size))
            stored, self.images[index] = self.images[index], image
            return stored
        return image


def prepare(image: Radiograph, settings: CycleGANSettings) -> TrainingImage:
    """An image as training draws from it: resized to the load size (bicubic, as upstream)
    or kept as is, stored as 16 bits: a thousand full-size radiographs would not fit in
    memory as floats, so each is prepared as it is read."""
    if settings.preprocess == 'resize_and_crop':
        picture = Image.fromarray(np.asarray(image, np.float32))  # mode F
        size = (settings.load_size, settings.load_size)
        image = np.asarray(picture.resize(size, Image.Resampling.BICUBIC)).clip(0, 1)
    elif min(image.shape) < settings.crop_size:
        raise ValueError(
            f'an image of {image.shape} is smaller than the crop {settings.crop_size}'
        )
    stored: TrainingImage = np.round(np.asarray(image) * 65535).astype(np.uint16)
    return stored


def random_crop(
    image: TrainingImage, size: int, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """A random ``size`` square, flipped left-right with p = 1/2, in [-1, 1]."""
    top = int(rng.integers(image.shape[0] - size + 1))
    left = int(rng.integers(image.shape[1] - size + 1))
    crop = image[top : top + size, left : left + size].astype(np.float32) / 65535
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(2 * crop - 1)


class CycleGANTraining:
    """Upstream's ``CycleGANModel.optimize_parameters`` step, state and schedule."""

    def __init__(
        self,
        domain_a: Sequence[TrainingImage],
        domain_b: Sequence[TrainingImage],
        settings: CycleGANSettings,
        *,
        validation: tuple[Sequence[Radiograph], Sequence[Radiograph]] = ((), ()),
        panel_dir: Path | None = None,
    ) -> None:
        if settings.crop_size % SIZE_MULTIPLE:
            raise ValueError(f'the crop size must be a multiple of {SIZE_MULTIPLE}')
        self.settings, self.panel_dir = settings, panel_dir
        self.device = torch.device(settings.device)
        self.rng = np.random.default_rng(settings.seed)
        self.images = {'A': list(domain_a), 'B': list(domain_b)}
        self.validation = validation
        torch.manual_seed(settings.seed)
        width = {'ngf': settings.ngf, 'blocks': settings.blocks}
        self.G_A, self.G_B = ResnetGenerator(**width), ResnetGenerator(**width)
        self.D_A, self.D_B = (
            NLayerDiscriminator(ndf=settings.ndf),
            NLayerDiscriminator(ndf=settings.ndf),
        )
        for network in self.networks:
            init_weights(network)
            network.to(self.device)
        self.optimiser_G = self._adam(self.G_A, self.G_B)
        self.optimiser_D = self._adam(self.D_A, self.D_B)
        self.schedules = [
            LambdaLR(optimiser, self._learning_rate_factor)
            for optimiser in (self.optimiser_G, self.optimiser_D)
        ]
        self.pools = {'A': ImagePool(), 'B': ImagePool()}
        self.step = 0
        self.best: dict[str, Any] = {}
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.device.type == 'cuda')

    @property
    def networks(self) -> tuple[torch.nn.Module, ...]:
        return self.G_A, self.G_B, self.D_A, self.D_B

    def _adam(self, *modules: torch.nn.Module) -> torch.optim.Adam:
        parameters = [p for module in modules for p in module.parameters()]
        return torch.optim.Adam(parameters, lr=LEARNING_RATE, betas=ADAM_BETAS)

    def _learning_rate_factor(self, step: int) -> float:
        """Upstream's 'linear' policy over steps instead of epochs: constant for the first
        half, then down linearly, reaching zero after the last step."""
        constant = self.settings.steps // 2
        return 1.0 - max(0, step - constant) / (self.settings.steps - constant + 1)

    def _draw(self, domain: str) -> torch.Tensor:
        images = self.images[domain]
        image = images[int(self.rng.integers(len(images)))]
        crop = random_crop(image, self.settings.crop_size, self.rng)
        return torch.from_numpy(crop)[None, None].to(self.device)

    def train_step(self) -> dict[str, float]:
        real_a, real_b = self._draw('A'), self._draw('B')
        losses, fake_b, fake_a = self._train_generators(real_a, real_b)
        losses |= self._train_discriminators(real_a, real_b, fake_a, fake_b)
        for schedule in self.schedules:
            schedule.step()
        self.scaler.update()
        self.step += 1
        if self.step % self.settings.validation_every == 0:
            self.validate()
        return losses

    def _train_generators(
        self, real_a: torch.Tensor, real_b: torch.Tensor
    ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        for discriminator in (self.D_A, self.D_B):
            discriminator.requires_grad_(False)
        self.optimiser_G.zero_grad(set_to_none=True)
        with training_precision(self.device.type):
            fake_b, fake_a = self.G_A(real_a), self.G_B(real_b)
            rec_a, rec_b = self.G_B(fake_b), self.G_A(fake_a)
            idt_a, idt_b = self.G_A(real_b), self.G_B(real_a)
            terms = {
                'G_A': ((self.D_A(fake_b) - 1) ** 2).mean(),
                'G_B': ((self.D_B(fake_a) - 1) ** 2).mean(),
            }
        terms['cycle_A'] = (rec_a.float() - real_a).abs().mean() * CYCLE_WEIGHT
        terms['cycle_B'] = (rec_b.float() - real_b).abs().mean() * CYCLE_WEIGHT
        identity = CYCLE_WEIGHT * IDENTITY_WEIGHT
        terms['idt_A'] = (idt_a.float() - real_b).abs().mean() * identity
        terms['idt_B'] = (idt_b.float() - real_a).abs().mean() * identity
        total = sum(terms.values(), torch.zeros((), device=self.device))
        torch.autograd.backward(self.scaler.scale(total))
        self.scaler.step(self.optimiser_G)
        for discriminator in (self.D_A, self.D_B):
            discriminator.requires_grad_(True)
        return {k: v.item() for k, v in terms.items()}, fake_b.detach(), fake_a.detach()

    def _train_discriminators(
        self,
        real_a: torch.Tensor,
        real_b: torch.Tensor,
        fake_a: torch.Tensor,
        fake_b: torch.Tensor,
    ) -> dict[str, float]:
        self.optimiser_D.zero_grad(set_to_none=True)
        losses = {}
        for name, discriminator, real, fake in (
            ('D_A', self.D_A, real_b, self.pools['B'].query(fake_b, self.rng)),
            ('D_B', self.D_B, real_a, self.pools['A'].query(fake_a, self.rng)),
        ):
            with training_precision(self.device.type):
                loss = 0.5 * (
                    ((discriminator(real) - 1) ** 2).mean() + (discriminator(fake) ** 2).mean()
                )
            torch.autograd.backward(self.scaler.scale(loss))
            losses[name] = loss.item()
        self.scaler.step(self.optimiser_D)
        return losses

    def validate(self) -> float | None:
        """Map the held-out A images; save the panel (A | G_A(A) | G_B(G_A(A)) per row) and
        keep G_A if its images are the closest yet to the held-out B images (histogram
        Wasserstein distance). Returns that distance (None without held-out images)."""
        held_a, held_b = self.validation
        if not held_a:
            return None
        self.G_A.eval(), self.G_B.eval()
        device = str(self.device)
        mapped = [translate(self.G_A, image, device=device) for image in held_a]
        cycled = [translate(self.G_B, image, device=device) for image in mapped]
        self.G_A.train(), self.G_B.train()
        if self.panel_dir is not None:
            path = self.panel_dir / f'validation_step-{self.step:07d}.png'
            write_atomically(path, lambda tmp: _save_panel(held_a, mapped, cycled, tmp))
        if not held_b:
            return None
        score = histogram_wasserstein(mapped, held_b)
        if not self.best or score < self.best['score']:
            state = {k: v.detach().cpu().clone() for k, v in self.G_A.state_dict().items()}
            self.best = {'score': score, 'step': self.step, 'G_A': state}
        return score

    def state_dict(self) -> dict[str, Any]:
        return {
            'networks': [network.state_dict() for network in self.networks],
            'optimisers': [self.optimiser_G.state_dict(), self.optimiser_D.state_dict()],
            'schedules': [schedule.state_dict() for schedule in self.schedules],
            'pools': {name: pool.images for name, pool in self.pools.items()},
            'step': self.step,
            'best': copy.copy(self.best),
            'scaler': self.scaler.state_dict(),
            'rng': self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for network, network_state in zip(self.networks, state['networks'], strict=True):
            network.load_state_dict(network_state)
        self.optimiser_G.load_state_dict(state['optimisers'][0])
        self.optimiser_D.load_state_dict(state['optimisers'][1])
        for schedule, schedule_state in zip(self.schedules, state['schedules'], strict=True):
            schedule.load_state_dict(schedule_state)
        for name, images in state['pools'].items():
            self.pools[name].images = [image.to(self.device) for image in images]
        self.step, self.best = state['step'], state['best']
        self.scaler.load_state_dict(state['scaler'])
        self.rng.bit_generator.state = state['rng']


def _save_panel(
    originals: Sequence[Radiograph],
    mapped: Sequence[Radiograph],
    cycled: Sequence[Radiograph],
    out_file: Path,
) -> None:
    """Rows of A | G_A(A) | G_B(G_A(A)), each image shown at most 256 pixels high, as a PNG."""
    rows = []
    for images in zip(originals, mapped, cycled, strict=True):
        scale = min(1.0, 256 / images[0].shape[0])
        size = (
            max(1, round(images[0].shape[1] * scale)),
            max(1, round(images[0].shape[0] * scale)),
        )
        tiles = [
            np.asarray(Image.fromarray(np.uint8(np.clip(i, 0, 1) * 255)).resize(size))
            for i in images
        ]
        rows.append(np.concatenate(tiles, axis=1))
    width = max(row.shape[1] for row in rows)
    panel = np.concatenate([np.pad(row, ((0, 4), (0, width - row.shape[1]))) for row in rows])
    Image.fromarray(panel).save(out_file, format='png')
