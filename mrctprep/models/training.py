"""The training loop every model shares: progress, checkpoints that resume exactly, and a log.

A model's training is a :class:`TrainingTask`: one ``train_step`` at a time, and its whole
state (networks, optimisers, schedules, its own random generator) as a dict. This loop adds the
step counter, torch's random state and the loss history, saves them atomically every
``checkpoint_every`` steps, and on ``resume`` continues from the last checkpoint so that the
result is the same as one uninterrupted run.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mrctprep.core.derivatives import write_atomically, write_text_atomically
from mrctprep.core.errors import CheckpointError

LOGGER = logging.getLogger(__name__)
PROGRESS_SECONDS = 10.0
BAR_WIDTH = 20


class TrainingTask(Protocol):
    def train_step(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class TrainingSettings:
    name: str
    steps: int
    checkpoint_file: Path
    checkpoint_every: int
    resume: bool = False
    #: What the checkpoint must have been trained on to be resumed (data, settings).
    fingerprint: str = ''


class ModelSelection:
    """Keeps the weights that scored best on held-out data, scoring them every ``every`` steps.

    ``score()`` returns named figures, among them ``'score'`` (lower is better); ``weights()``
    the state to keep (a GAN's generator, say). GAN training drifts rather than converges,
    so the last weights are seldom the best ones; the last state stays in the checkpoint.
    """

    def __init__(
        self,
        score: Callable[[], dict[str, float]],
        weights: Callable[[], dict[str, torch.Tensor]],
        every: int,
    ) -> None:
        self.score, self.weights, self.every = score, weights, every
        self.best_step, self.best_score = 0, math.inf
        self.best_weights: dict[str, torch.Tensor] = {}

    def observe(self, step: int) -> dict[str, float]:
        """Score the current weights, keep them if they are the best so far; the figures as
        ``val_<name>`` columns of the training log."""
        figures = self.score()
        if figures['score'] < self.best_score:
            self.best_step, self.best_score = step, figures['score']
            self.best_weights = {k: v.detach().cpu().clone() for k, v in self.weights().items()}
        LOGGER.info(
            'validation at step %d: %s (best: step %d)',
            step,
            '  '.join(f'{name} {value:.4g}' for name, value in figures.items()),
            self.best_step,
        )
        return {f'val_{name}': value for name, value in figures.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            'step': self.best_step,
            'score': self.best_score,
            'weights': copy.copy(self.best_weights),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_step, self.best_score = state['step'], state['score']
        self.best_weights = dict(state['weights'])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's legacy global generator and torch (tasks use their own Generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_training(
    task: TrainingTask, settings: TrainingSettings, selection: ModelSelection | None = None
) -> list[dict[str, float]]:
    """Train ``task`` up to ``settings.steps`` steps; return one row of losses per step (and
    the validation figures on the steps ``selection`` scores, and at the last step)."""
    history: list[dict[str, float]] = []
    first_step = 0
    if settings.resume:
        first_step, history = _load_checkpoint(task, settings, selection)
        LOGGER.info(
            '%s: resuming at step %d of %d from %s',
            settings.name,
            first_step,
            settings.steps,
            settings.checkpoint_file,
        )
    progress = _Progress(settings.name, settings.steps, first_step)
    for step in range(first_step + 1, settings.steps + 1):
        losses = task.train_step()
        history.append({'step': step, **losses})
        progress.update(step, losses)
        if selection and (step % selection.every == 0 or step == settings.steps):
            history[-1].update(selection.observe(step))
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            _save_checkpoint(task, settings, step, history, selection)
    return history


def _save_checkpoint(
    task: TrainingTask,
    settings: TrainingSettings,
    step: int,
    history: list[dict[str, float]],
    selection: ModelSelection | None,
) -> None:
    state = {
        'selection': selection.state_dict() if selection else None,
        'step': step,
        'fingerprint': settings.fingerprint,
        'task': task.state_dict(),
        'history': history,
        'torch_rng': torch.get_rng_state(),
        'cuda_rng': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'python_rng': random.getstate(),
    }
    write_atomically(settings.checkpoint_file, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(
    task: TrainingTask, settings: TrainingSettings, selection: ModelSelection | None
) -> tuple[int, list[dict[str, float]]]:
    if not settings.checkpoint_file.is_file():
        raise CheckpointError(settings.checkpoint_file, 'no checkpoint to resume from')
    # our own file, holding optimiser and random states that the weights-only loader refuses
    state = torch.load(settings.checkpoint_file, map_location='cpu', weights_only=False)
    if state['fingerprint'] != settings.fingerprint:
        raise CheckpointError(
            settings.checkpoint_file,
            'the checkpoint was trained on other data or settings '
            '(participants, sites, patch size or seed differ)',
        )
    task.load_state_dict(state['task'])
    if selection and state.get('selection'):
        selection.load_state_dict(state['selection'])
    torch.set_rng_state(state['torch_rng'])
    if state['cuda_rng'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda_rng'])
    random.setstate(state['python_rng'])
    return state['step'], state['history']


class _Progress:
    """``iguane [#####-----] 120/200 steps  0.85 steps/s  ETA 1m34s  loss_G 2.31 ...``,
    logged every 10 s and at the last step."""

    def __init__(self, name: str, steps: int, first_step: int):
        self.name, self.steps, self.first_step = name, steps, first_step
        self.start = self.last_report = time.monotonic()

    def update(self, step: int, losses: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last_report < PROGRESS_SECONDS and step not in (
            self.first_step + 1,
            self.steps,
        ):
            return
        self.last_report = now
        rate = (step - self.first_step) / max(now - self.start, 1e-9)
        done = int(BAR_WIDTH * step / self.steps)
        bar = '#' * done + '-' * (BAR_WIDTH - done)
        eta = _duration((self.steps - step) / rate)
        shown = '  '.join(f'{key} {value:.3g}' for key, value in losses.items())
        LOGGER.info(
            '%s [%s] %d/%d steps  %.3g steps/s  ETA %s  %s',
            self.name,
            bar,
            step,
            self.steps,
            rate,
            eta,
            shown,
        )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


def write_training_log(history: list[dict[str, float]], tsv_file: Path, plot_file: Path) -> None:
    """The loss history as a TSV (one row per step; validation figures, where scored, as
    ``val_*`` columns, n/a elsewhere) and a PNG of the curves."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, delimiter='\t', lineterminator='\n', restval='n/a')
    writer.writeheader()
    writer.writerows({key: f'{value:.6g}' for key, value in row.items()} for row in history)
    write_text_atomically(tsv_file, buffer.getvalue())
    write_atomically(plot_file, lambda tmp: _plot_losses(history, tmp))


def _plot_losses(history: list[dict[str, float]], out_file: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = [key for key in dict.fromkeys(k for row in history for k in row) if key != 'step']
    figure, axes = plt.subplots(len(names), 1, figsize=(7, 1.6 * len(names)), sharex=True)
    for axis, name in zip(np.atleast_1d(axes), names, strict=True):
        rows = [row for row in history if name in row]
        steps = np.array([row['step'] for row in rows])
        values = np.array([row[name] for row in rows])
        if name.startswith('val_'):  # scored now and then: the points themselves
            axis.plot(steps, values, 'o-', color='tab:orange', markersize=3)
        else:
            axis.plot(steps, values, color='0.75', linewidth=0.8)
            window = max(1, len(values) // 20)
            smooth = np.convolve(values, np.ones(window) / window, mode='valid')
            axis.plot(steps[window - 1 :], smooth, color='tab:blue', linewidth=1.5)
        axis.set_ylabel(name, rotation=0, ha='right', va='center')
        axis.grid(alpha=0.3)
    np.atleast_1d(axes)[-1].set_xlabel('training step')
    figure.tight_layout()
    figure.savefig(out_file, format='png', dpi=100)
    plt.close(figure)
