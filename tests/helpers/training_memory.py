"""Run IGUANe training steps on crops and print the estimated and the measured peak memory.

    python tests/helpers/training_memory.py PATCH FOLDER

Run in a process of its own, so that the peak resident set belongs to these steps alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from mrctprep.models.iguane_training import (
    IguaneTraining,
    IguaneTrainingSettings,
    TrainingImage,
    training_step_memory,
)
from mrctprep.models.memory import peak_resident_bytes, resident_bytes

SHAPE = (96, 112, 96)


def main(patch: int, folder: Path) -> None:
    rng = np.random.default_rng(0)
    images = []
    for k in range(4):
        data = np.zeros(SHAPE, np.float32)
        data[16:-16, 16:-16, 16:-16] = rng.normal(500, 50, (64, 80, 64))
        path = folder / f'image{k}.nii.gz'
        nb.Nifti1Image(data, np.eye(4)).to_filename(path)
        images.append(TrainingImage(path, 'A' if k < 2 else 'B'))
    torch.set_num_threads(1)
    settings = IguaneTrainingSettings(steps=2, patch_size=(patch,) * 3)
    before = resident_bytes()
    memory = training_step_memory(settings, image_shape=SHAPE, image_count=4, source_sites=1)
    estimate = memory.at(patch**3).total
    training = IguaneTraining(images[:2], {'B': images[2:]}, settings)
    for _ in range(settings.steps):
        training.train_step()
    peak = peak_resident_bytes()
    print(json.dumps({'predicted': before + estimate, 'measured': peak}))


if __name__ == '__main__':
    main(int(sys.argv[1]), Path(sys.argv[2]))
