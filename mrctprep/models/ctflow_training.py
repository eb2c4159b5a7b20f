"""CTFlow's training as a :class:`~mrctprep.models.training.TrainingTask`.

Two phases in one run, as upstream's two configurations: first the RRDB encoder alone with its
L1 head (Adam 2e-4, betas 0.9/0.99), then the flow by negative log-likelihood in bits per
pixel (Adam 1e-4 with upstream's effective betas 0.9/0.999, weight decay 0), the encoder
frozen for the first half of the flow steps and trained jointly after, the learning rate
halved at 50, 75, 90 and 95 % of the flow steps. Batches are aligned random crops of paired
slices with random left-right flips; no dequantization noise (upstream's training call adds
none). Every random choice comes from the task's own generator, so a resumed run repeats the
uninterrupted one exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional
from torch.optim.lr_scheduler import MultiStepLR

from mrctprep.models.ctflow import SIZES, CTFlow

#: A slice pair in network values [0, 1]: (source, reference), each H x W float32.
SlicePair = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]

PRETRAIN_LEARNING_RATE = 2e-4
PRETRAIN_BETAS = (0.9, 0.99)
FLOW_LEARNING_RATE = 1e-4
FLOW_BETAS = (0.9, 0.999)
DECAY_AT = (0.5, 0.75, 0.9, 0.95)
DECAY_FACTOR = 0.5
FROZEN_ENCODER_SHARE = 0.5


@dataclass(frozen=True)
class CTFlowSettings:
    steps: int = 2000
    #: share of the steps that pre-train the encoder with L1 before the flow's steps
    pretrain_share: float = 0.25
    size: str = 'cpu'
    crop: int = 128
    batch: int = 16
    device: str = 'cpu'
    seed: int = 0

    @property
    def pretrain_steps(self) -> int:
        return round(self.steps * self.pretrain_share)

    @property
    def flow_steps(self) -> int:
        return self.steps - self.pretrain_steps


def random_batch(
    pairs: Sequence[SlicePair], crop: int, batch: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` aligned ``crop``-square crops of random pairs, each flipped left-right with
    p = 1/2; (source, reference) as B x 1 x crop x crop tensors."""
    sources: list[npt.NDArray[np.float32]] = []
    references: list[npt.NDArray[np.float32]] = []
    for _ in range(batch):
        source, reference = pairs[int(rng.integers(len(pairs)))]
        top = int(rng.integers(source.shape[0] - crop + 1))
        left = int(rng.integers(source.shape[1] - crop + 1))
        window = (slice(top, top + crop), slice(left, left + crop))
        flip = rng.random() < 0.5
        for out, image in ((sources, source), (references, reference)):
            cropped = image[window]
            out.append(np.ascontiguousarray(cropped[:, ::-1] if flip else cropped))
    return (
        torch.from_numpy(np.stack(sources)[:, None]),
        torch.from_numpy(np.stack(references)[:, None]),
    )


class CTFlowTraining:
    """Encoder pre-training, then the flow; one ``train_step`` per batch."""

    def __init__(self, pairs: Sequence[SlicePair], settings: CTFlowSettings) -> None:
        smallest = min(min(source.shape) for source, _ in pairs)
        if smallest < settings.crop:
            raise ValueError(f'slices of {smallest} pixels, crops of {settings.crop}')
        self.pairs = pairs
        self.settings = settings
        self.device = torch.device(settings.device)
        self.rng = np.random.default_rng(settings.seed)
        self.model = CTFlow(SIZES[settings.size]).to(self.device)
        self.step = 0
        self.pretrain_optimizer = torch.optim.Adam(
            self.model.RRDB.parameters(), PRETRAIN_LEARNING_RATE, betas=PRETRAIN_BETAS
        )
        self.flow_optimizer = torch.optim.Adam(
            self.model.parameters(), FLOW_LEARNING_RATE, betas=FLOW_BETAS, weight_decay=0.0
        )
        milestones = [round(share * settings.flow_steps) for share in DECAY_AT]
        self.flow_schedule = MultiStepLR(self.flow_optimizer, milestones, DECAY_FACTOR)

    def train_step(self) -> dict[str, float]:
        source, reference = random_batch(
            self.pairs, self.settings.crop, self.settings.batch, self.rng
        )
        source, reference = source.to(self.device), reference.to(self.device)
        self.model.train()
        self.step += 1
        if self.step <= self.settings.pretrain_steps:
            loss = functional.l1_loss(self.model.RRDB(source), reference)
            self.pretrain_optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            self.pretrain_optimizer.step()
            return {'l1': loss.item()}
        flow_step = self.step - self.settings.pretrain_steps
        encoder_frozen = flow_step <= FROZEN_ENCODER_SHARE * self.settings.flow_steps
        self.model.RRDB.requires_grad_(not encoder_frozen)
        loss = self.model.nll_bits_per_dim(source, reference).mean()
        self.flow_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        self.flow_optimizer.step()
        self.flow_schedule.step()
        return {'nll_bits': loss.item()}

    def state_dict(self) -> dict[str, Any]:
        return {
            'model': self.model.state_dict(),
            'pretrain_optimizer': self.pretrain_optimizer.state_dict(),
            'flow_optimizer': self.flow_optimizer.state_dict(),
            'flow_schedule': self.flow_schedule.state_dict(),
            'rng': self.rng.bit_generator.state,
            'step': self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state['model'])
        self.pretrain_optimizer.load_state_dict(state['pretrain_optimizer'])
        self.flow_optimizer.load_state_dict(state['flow_optimizer'])
        self.flow_schedule.load_state_dict(state['flow_schedule'])
        self.rng.bit_generator.state = state['rng']
        self.step = int(state['step'])
