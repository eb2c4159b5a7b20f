"""IGUANe training that a researcher can trust: memory estimated before anything is loaded,
participants held out, and the weights that scored best on them kept."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch

from mrctprep.cli.errors import EXIT_RESOURCE, describe_error, exit_code_of
from mrctprep.core.errors import InputError, InsufficientMemoryError
from mrctprep.group.sites import ParticipantInfo
from mrctprep.group.validation import HarmonizationScore, ValidationImage, choose_held_out
from mrctprep.models.iguane import IguaneGenerator
from mrctprep.models.iguane_training import (
    IguaneTraining,
    IguaneTrainingSettings,
    TrainingImage,
    training_step_memory,
)
from mrctprep.models.inference import tile_that_fits
from mrctprep.models.memory import available_bytes, check_fits, inference_memory
from mrctprep.models.training import (
    ModelSelection,
    TrainingSettings,
    run_training,
    write_training_log,
)

HELPERS = Path(__file__).parent / 'helpers'


def _measured_against_predicted(*args: object) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, check=True
    )
    figures: dict[str, int] = json.loads(result.stdout.splitlines()[-1])
    return figures


@pytest.mark.parametrize('patch', [32, 48])
def test_the_memory_estimate_is_within_30_percent_of_the_measured_peak(tmp_path, patch):
    figures = _measured_against_predicted(HELPERS / 'training_memory.py', patch, tmp_path)
    assert 0.7 < figures['measured'] / figures['predicted'] < 1.3, figures


@pytest.mark.parametrize('side', [64, 96])
def test_the_inference_estimate_is_within_30_percent_of_the_measured_peak(side):
    figures = _measured_against_predicted(HELPERS / 'inference_memory.py', side)
    assert 0.7 < figures['measured'] / figures['predicted'] < 1.3, figures


def test_a_volume_that_does_not_fit_is_tiled_before_running_and_a_tile_that_does_not_refused():
    memory = inference_memory(IguaneGenerator())
    whole = (160, 192, 160)
    needed = memory.at(int(np.prod(whole))).total
    fits = dict(device='cpu', multiple=16, min_tile=64)
    assert tile_that_fits(memory, whole, needed, **fits) is None
    tile = tile_that_fits(memory, whole, needed // 4, **fits)
    assert tile is not None and all(
        t % 16 == 0 and t < w for t, w in zip(tile, whole, strict=True)
    )
    assert memory.at(int(np.prod(tile))).total <= needed // 4
    with pytest.raises(InsufficientMemoryError) as refused:
        tile_that_fits(memory, whole, 10 * 2**20, **fits)
    line = describe_error(refused.value)
    assert line.startswith('inference on tiles of (64, 64, 64) needs about ')
    assert '0.0 GB available on cpu; use a machine or GPU' in line


def test_a_step_that_does_not_fit_is_refused_with_the_patch_size_that_fits():
    settings = IguaneTrainingSettings(patch_size=None)
    memory = training_step_memory(
        settings, image_shape=(160, 192, 160), image_count=4, source_sites=1
    )
    with pytest.raises(InsufficientMemoryError) as refused:
        # 512^3 voxels would need terabytes on any machine
        check_fits(
            memory, voxels=512**3, device='cpu', what='a step', patch_multiple=16, patch_limit=160
        )
    error = refused.value
    available = available_bytes('cpu')
    assert error.fitting_patch and error.fitting_patch % 16 == 0
    assert memory.at(error.fitting_patch**3).total <= available * 1.05
    if error.fitting_patch < 160:
        assert memory.at((error.fitting_patch + 16) ** 3).total > available * 0.95
    line = describe_error(error)
    assert line.startswith('a step needs about ') and 'available on cpu' in line
    assert f'--train-patch-size {error.fitting_patch} fits' in line and '\n' not in line
    assert exit_code_of(error) == EXIT_RESOURCE


def _cohort(per_site: int, travellers: bool = True) -> dict[str, ParticipantInfo]:
    return {
        f'{site}{k}': ParticipantInfo(
            f'{site}{k}', site, 40.0, traveller=f't{k}' if travellers else None
        )
        for site in ('A', 'B')
        for k in range(per_site)
    }


def test_held_out_participants_are_whole_travellers_of_every_site():
    cohort = _cohort(8)
    held = choose_held_out(cohort, None, seed=0)
    assert sorted(cohort[p].site for p in held) == ['A', 'A', 'B', 'B']
    travellers = {cohort[p].traveller for p in held}
    assert len(travellers) == 2  # each at both sites
    assert held == choose_held_out(cohort, None, seed=0)
    assert choose_held_out(_cohort(5), None, seed=0) == set()  # too few to spare
    assert len(choose_held_out(_cohort(5, travellers=False), 1, seed=0)) == 2
    with pytest.raises(InputError, match='site A has 3 participant'):
        choose_held_out(_cohort(3), 3, seed=0)


def _head(path: Path, power: float, wobble: float, rng) -> Path:
    """A brain-shaped blob on a 4 mm MNI grid (it spans many of the 24 regions); a site's
    contrast is a power of the tissue."""
    affine = np.array([[4, 0, 0, -32], [0, 4, 0, -70], [0, 0, 4, -20], [0, 0, 0, 1.0]])
    grid = np.indices((16, 32, 16)).astype(np.float32)
    inside = ((grid[0] - 8) / 7) ** 2 + ((grid[1] - 16) / 14) ** 2 + ((grid[2] - 8) / 7) ** 2
    tissue = 1 + 0.4 * np.sin(grid[0] / (1 + wobble)) * np.cos(grid[1] / 2)
    data = np.where(inside < 1, 500 * tissue**power + rng.normal(0, 5, grid.shape[1:]), 0)
    nb.Nifti1Image(data.astype(np.float32), affine).to_filename(path)
    return path


def test_the_best_scoring_generator_is_kept_and_resumed(tmp_path):
    rng = np.random.default_rng(0)
    sites = {'A': 1.0, 'B': 1.4}
    train = [
        TrainingImage(_head(tmp_path / f'{s}{k}.nii.gz', p, k, rng), s)
        for s, p in sites.items()
        for k in range(2)
    ]
    held = [
        ValidationImage(
            _head(tmp_path / f'held{s}{k}.nii.gz', p, k + 2, rng),
            ParticipantInfo(f'held{s}{k}', s, None, traveller=f't{k}'),
        )
        for s, p in sites.items()
        for k in range(2)
    ]

    def train_with_selection(steps, checkpoint, resume=False):
        torch.manual_seed(3)
        task = IguaneTraining(
            train[:2], {'B': train[2:]}, IguaneTrainingSettings(steps=2, patch_size=None)
        )
        score = HarmonizationScore(held, task.generator, device='cpu', tile=None)
        selection = ModelSelection(score, task.generator.state_dict, every=1)
        settings = TrainingSettings('iguane', steps, checkpoint, 1, resume=resume)
        return task, selection, run_training(task, settings, selection)

    task, selection, history = train_with_selection(2, tmp_path / 'a.pt')
    scored = [row for row in history if 'val_score' in row]
    assert [row['step'] for row in scored] == [1, 2]
    assert len(held) == 4 and all(0 <= row['val_site_effect'] <= 1 for row in scored)
    assert all('val_travelling_difference' in row for row in scored)
    best = min(scored, key=lambda row: row['val_score'])
    assert selection.best_step == best['step'] and selection.best_score == best['val_score']
    if best['step'] == 2:
        for name, value in task.generator.state_dict().items():
            assert torch.equal(selection.best_weights[name], value)

    train_with_selection(1, tmp_path / 'b.pt')
    _, resumed, resumed_history = train_with_selection(2, tmp_path / 'b.pt', resume=True)
    assert resumed_history == history
    assert (resumed.best_step, resumed.best_score) == (selection.best_step, selection.best_score)


def test_the_training_log_marks_steps_without_validation_not_available(tmp_path):
    history = [{'step': 1, 'loss_G': 2.0}, {'step': 2, 'loss_G': 1.5, 'val_score': 0.25}]
    write_training_log(history, tmp_path / 'log.tsv', tmp_path / 'loss.png')
    rows = list(csv.DictReader((tmp_path / 'log.tsv').open(), delimiter='\t'))
    assert [(row['loss_G'], row['val_score']) for row in rows] == [('2', 'n/a'), ('1.5', '0.25')]
    assert (tmp_path / 'loss.png').read_bytes()[:4] == b'\x89PNG'
