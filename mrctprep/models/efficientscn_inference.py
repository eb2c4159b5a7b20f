"""EfficientSCN's two inference stages on a CT: the organ box, then the organ labels.

The geometry is :mod:`mrctprep.imaging.organ_boxes`; here the networks run, in the fast
precision of the device (float16 on CUDA, bfloat16 autocast on CPUs that have it), with
float32 outputs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from mrctprep.core.devices import fast_precision
from mrctprep.imaging.organ_boxes import LocalizationInput
from mrctprep.models.efficientscn import LocalizationNet


def load_localization_net(state_dict: dict[str, torch.Tensor], device: str) -> LocalizationNet:
    network = LocalizationNet()
    network.load_state_dict(state_dict)
    return network.to(device).eval()


def localization_mask(
    network: LocalizationNet, loc: LocalizationInput, device: str
) -> npt.NDArray[np.bool_]:
    """Foreground where the foreground logit exceeds the background logit."""
    image = torch.from_numpy(loc.array)[None, None].to(device)
    with torch.no_grad(), fast_precision(device):
        logits = network(image).float()
    mask: npt.NDArray[np.bool_] = (logits[0, 1] > logits[0, 0]).cpu().numpy()
    return mask
