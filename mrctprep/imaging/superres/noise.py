"""Noise and contrast of a scan from its intensity histogram (UniRes's hyper-parameters).

A two-class mixture is fitted to the histogram: Rician for MR magnitude images, Gaussian for
CT. The class with the smaller spread is the background (air); its standard deviation is the
noise, and the distance between the class means the contrast ``mu`` that scales the
regularisation.

A volume without air (a crop inside the head, a skull-stripped brain filling its box) has no
background class: the narrower class is then a tissue, whose spread is anatomy rather than
noise, and the fit would make the prior far too strong (UniRes's own estimate over-smoothed
such a crop below trilinear interpolation). Such a fit is recognised and replaced: the noise
from the median absolute response to Immerkaer's Laplacian difference mask (edges do not move
a median), the contrast from the distance of the median tissue value to air.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

#: Air's value: 0 in MR magnitude images, -1000 HU in CT.
AIR = {'mr': 0.0, 'ct': -1000.0}
_BINS = 1024
_EM_ITERATIONS = 200


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise standard deviation and contrast of one scan, and how they were found."""

    sd: float
    mu: float
    method: str

    @property
    def precision(self) -> float:
        """tau = 1 / sd^2, the weight of the scan in the data term."""
        return 1.0 / self.sd**2

    def to_metadata(self) -> dict:
        return {
            'NoiseSD': round(self.sd, 6),
            'Contrast': round(self.mu, 6),
            'NoiseMethod': self.method,
        }


@dataclass(frozen=True)
class _Mixture:
    weights: np.ndarray
    means: np.ndarray
    sds: np.ndarray


def estimate_noise(
    data: np.ndarray, voxel_size: tuple[float, float, float], *, modality: str
) -> NoiseEstimate:
    """Noise sd and contrast of ``data`` (a 3D scan, ``modality`` ``'mr'`` or ``'ct'``)."""
    values = np.asarray(data, dtype=np.float64).ravel()
    values = values[(values != 0) & (values != values.min()) & (values != values.max())]
    if modality == 'mr':
        values = values[values > 0]
    if values.size < 100 or values.max() <= values.min():
        raise ValueError(f'too few distinct values ({values.size}) to estimate the noise')
    counts, edges = np.histogram(values, bins=_BINS)
    centres = (edges[:-1] + edges[1:]) / 2
    fit = _fit_rician_mixture if modality == 'mr' else _fit_gaussian_mixture
    mixture = fit(centres, counts.astype(np.float64))
    noise = int(np.argmin(mixture.sds))
    foreground = 1 - noise
    if _is_air(mixture, noise, modality):
        return NoiseEstimate(
            sd=float(mixture.sds[noise]),
            mu=float(abs(mixture.means[foreground] - mixture.means[noise])),
            method=f'{"Rician" if modality == "mr" else "Gaussian"} mixture (2 classes)',
        )
    return NoiseEstimate(
        sd=laplacian_noise_sd(data, voxel_size),
        mu=float(abs(np.median(values) - AIR[modality])),
        method='no air class: Laplacian median absolute deviation (Immerkaer)',
    )


def _is_air(mixture: _Mixture, noise: int, modality: str) -> bool:
    """Whether the narrow class is background: near air's value, not a tissue."""
    mean, sd = mixture.means[noise], mixture.sds[noise]
    if modality == 'ct':
        # Air is -1000 HU; lungs (-900 to -600) are a tissue with texture, not noise.
        return mean < -900
    # Pure Rician background (no signal) has a mean of sigma sqrt(pi / 2) = 1.25 sigma.
    return mean < 2.5 * sd and mixture.weights[noise] > 0.01


def laplacian_noise_sd(data: np.ndarray, voxel_size: tuple[float, float, float]) -> float:
    """Noise sd from the in-plane Laplacian difference mask (Immerkaer, 1996), robustly.

    The mask ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` cancels planes and linear ramps; its response
    to white noise of sd s has sd 6 s. The median absolute response (over voxels with no
    zero neighbour, so no padding) is taken through the two finest axes, where thick-slice
    scans are sharp.
    """
    data = np.asarray(data, dtype=np.float32)
    thin = sorted(np.argsort(voxel_size, kind='stable')[:2].tolist())
    mask2d = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    shape = [1, 1, 1]
    shape[thin[0]], shape[thin[1]] = 3, 3
    response = ndimage.convolve(data, mask2d.reshape(shape), mode='nearest')
    valid = ndimage.minimum_filter(data != 0, size=shape)
    absolute = np.abs(response[valid]) if valid.any() else np.abs(response.ravel())
    # median |N(0, s)| = 0.6745 s
    return float(np.median(absolute) / 0.6745 / 6) or 1.0


def _fit_gaussian_mixture(x: np.ndarray, counts: np.ndarray) -> _Mixture:
    """EM for two Gaussians on a histogram."""
    mixture = _initial_mixture(x, counts)
    for _ in range(_EM_ITERATIONS):
        log_p = (
            np.log(mixture.weights)[None]
            - np.log(mixture.sds)[None]
            - (x[:, None] - mixture.means[None]) ** 2 / (2 * mixture.sds[None] ** 2)
        )
        resp = _responsibilities(log_p) * counts[:, None]
        total = resp.sum(axis=0) + 1e-12
        means = (resp * x[:, None]).sum(axis=0) / total
        variances = (resp * (x[:, None] - means) ** 2).sum(axis=0) / total
        mixture = _Mixture(total / total.sum(), means, np.sqrt(np.maximum(variances, 1e-6)))
    return mixture


def _fit_rician_mixture(x: np.ndarray, counts: np.ndarray) -> _Mixture:
    """EM for two Rician distributions on a histogram of magnitudes ``x > 0``.

    The Rician is the magnitude of a complex Gaussian of mean ``nu`` and variance
    ``sigma^2`` per component; EM over the unseen phase updates
    ``nu = E[x I1/I0(x nu / sigma^2)]`` and ``sigma^2 = (E[x^2] - nu^2) / 2``. The returned
    sds are the sigmas (the noise of the complex signal, what the data term needs), the means
    those of the magnitudes each class explains.
    """
    initial = _initial_mixture(x, counts)
    weights, nu, sigma = initial.weights, initial.means, initial.sds
    nu = nu * np.array([0.0, 1.0])  # the background starts as pure noise
    for _ in range(_EM_ITERATIONS):
        z = x[:, None] * nu[None] / sigma[None] ** 2
        log_p = (
            np.log(weights)[None]
            + np.log(x)[:, None]
            - 2 * np.log(sigma)[None]
            - (x[:, None] - nu[None]) ** 2 / (2 * sigma[None] ** 2)
            + np.log(special.ive(0, z) + 1e-300)
        )
        resp = _responsibilities(log_p) * counts[:, None]
        total = resp.sum(axis=0) + 1e-12
        bessel_ratio = special.ive(1, z) / (special.ive(0, z) + 1e-300)
        nu = (resp * x[:, None] * bessel_ratio).sum(axis=0) / total
        second_moment = (resp * x[:, None] ** 2).sum(axis=0) / total
        sigma = np.sqrt(np.maximum((second_moment - nu**2) / 2, 1e-6))
        weights = total / total.sum()
    resp = _responsibilities(log_p) * counts[:, None]
    total = resp.sum(axis=0) + 1e-12
    means = (resp * x[:, None]).sum(axis=0) / total
    return _Mixture(weights, means, sigma)


def _initial_mixture(x: np.ndarray, counts: np.ndarray) -> _Mixture:
    """Two classes split at the histogram's median."""
    cumulative = np.cumsum(counts) / counts.sum()
    split = int(np.searchsorted(cumulative, 0.5))
    classes = [slice(0, max(split, 1)), slice(max(split, 1), len(x))]
    weights, means, sds = [], [], []
    for part in classes:
        c, v = counts[part] + 1e-12, x[part]
        mean = float((c * v).sum() / c.sum())
        weights.append(c.sum())
        means.append(mean)
        sds.append(max(float(np.sqrt((c * (v - mean) ** 2).sum() / c.sum())), 1e-3))
    mixing = np.array(weights)
    return _Mixture(mixing / mixing.sum(), np.array(means), np.array(sds))


def _responsibilities(log_p: np.ndarray) -> np.ndarray:
    log_p = log_p - log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(axis=1, keepdims=True)
