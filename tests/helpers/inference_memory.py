"""Harmonize a volume with an IGUANe generator and print the estimated and the measured peak
memory of the whole-volume pass.

    python tests/helpers/inference_memory.py SIDE

Run in a process of its own, so that the peak resident set belongs to this pass alone.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from mrctprep.models.iguane import IguaneGenerator, harmonize_volume
from mrctprep.models.memory import inference_memory, peak_resident_bytes, resident_bytes


def main(side: int) -> None:
    data = np.zeros((side,) * 3, np.float32)
    inner = side - 16
    data[8:-8, 8:-8, 8:-8] = np.random.default_rng(0).normal(500, 50, (inner,) * 3)
    torch.set_num_threads(1)
    generator = IguaneGenerator().eval()
    before = resident_bytes()
    estimate = inference_memory(generator).at(side**3)
    harmonize_volume(data, generator, 'cpu')
    print(json.dumps({'predicted': before + estimate.total, 'measured': peak_resident_bytes()}))


if __name__ == '__main__':
    main(int(sys.argv[1]))
