"""Kernel and dose variants of a CT slice through a simulated scanner chain.

Most sites have one reconstruction per acquisition and no raw projections, so the paired
data CTFlow learns from is simulated: the slice in HU becomes linear attenuation, is forward
projected (parallel beam, scikit-image's Radon transform) on a grid twice as fine as the one
it is reconstructed on, integrated over each detector bin, attenuated as a photon count with
Poisson and electronic (Gaussian) noise for the dose fraction, log-transformed back to line
integrals, and reconstructed by filtered back-projection (FBP) with a smoother or a sharper
filter. The fine projection grid keeps the simulation from sharing the reconstruction's
discretisation (the "inverse crime"); the detector integration gives the system its own,
finite resolution. The full dose of each slice is set as a scanner's automatic exposure
control sets it: so that the standard-kernel reconstruction has a given noise in the body
(the noise index), whatever the patient's size, pixel size and number of views; a dose fraction
scales those photons.

Parallel beam and a single effective energy (no beam hardening, no scatter) keep it light
enough for every slice of a volume on a CPU; kernel and dose change noise texture and edge
sharpness, which is what harmonization has to undo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.transform import iradon, radon

from mrctprep.imaging.hounsfield import BODY_HU

FloatArray = npt.NDArray[np.float64]

#: Linear attenuation of water at about 70 keV (the effective energy of a 120 kVp beam), /mm.
MU_WATER_PER_MM = 0.0195
AIR_HU = -1000.0
#: Reconstruction filters by kernel name: the ramp windowed more (smooth) or less (sharp).
KERNEL_FILTERS = {'smooth': 'hann', 'standard': 'shepp-logan', 'sharp': 'ramp'}
#: Automatic exposure control's target: the noise SD (HU) that the full-dose, standard-kernel
#: reconstruction adds inside the body, as a scanner's noise index sets the tube current for
#: each patient and slice (abdominal protocols aim at about 10-15 HU).
NOISE_INDEX_HU = 10.0
#: The detector's electronic noise SD, in photons per bin and view.
ELECTRONIC_NOISE_PHOTONS = 5.0
#: Projection grid: this many times finer than the reconstruction grid.
OVERSAMPLING = 2


@dataclass(frozen=True)
class ScanCondition:
    """One simulated reconstruction: a kernel of ``KERNEL_FILTERS`` and a dose fraction."""

    kernel: str
    dose: float

    def __post_init__(self) -> None:
        if self.kernel not in KERNEL_FILTERS:
            raise ValueError(
                f'unknown kernel {self.kernel!r}; kernels: {", ".join(KERNEL_FILTERS)}'
            )
        if not 0.0 < self.dose <= 1.0:
            raise ValueError(f'dose fraction {self.dose} outside (0, 1]')

    @property
    def label(self) -> str:
        """The BIDS ``rec-`` label: kernel and dose in percent, e.g. ``sharp25``."""
        return f'{self.kernel}{round(self.dose * 100)}'


@dataclass(frozen=True)
class ScannerModel:
    noise_index_hu: float = NOISE_INDEX_HU
    electronic_noise: float = ELECTRONIC_NOISE_PHOTONS
    #: Views over 180 degrees; None: pi/2 per detector bin (the sampling FBP needs).
    views: int | None = None


def hu_to_attenuation(hu: FloatArray) -> FloatArray:
    """Linear attenuation in /mm; air and below is zero."""
    return np.clip(MU_WATER_PER_MM * (1.0 + hu / 1000.0), 0.0, None)


def attenuation_to_hu(mu: FloatArray) -> FloatArray:
    return (mu / MU_WATER_PER_MM - 1.0) * 1000.0


def view_angles(side: int, views: int | None) -> FloatArray:
    count = views if views is not None else math.ceil(math.pi / 2 * side)
    return np.linspace(0.0, 180.0, count, endpoint=False)


def inscribed_circle(side: int) -> npt.NDArray[np.bool_]:
    """The reconstruction's field of view on a square grid (scikit-image's circle)."""
    centre = side // 2
    rows, cols = np.ogrid[:side, :side]
    return np.asarray((rows - centre) ** 2 + (cols - centre) ** 2 <= (side // 2 - 1) ** 2)


def forward_project(mu: FloatArray, pixel_mm: float, angles: FloatArray) -> FloatArray:
    """Line integrals (dimensionless) per detector bin of the reconstruction grid's spacing.

    The square slice ``mu`` (/mm, zero outside the inscribed circle) is interpolated onto a
    grid ``OVERSAMPLING`` times finer whose every other pixel lies on a coarse pixel's centre,
    projected there, and each coarse detector bin integrates the fine bins under a triangular
    aperture centred on it (so that the geometry's centre stays where FBP expects it).
    """
    side = mu.shape[0]
    fine_side = side * OVERSAMPLING
    coordinates = np.arange(fine_side) / OVERSAMPLING
    rows, cols = np.meshgrid(coordinates, coordinates, indexing='ij')
    fine = ndimage.map_coordinates(mu, [rows, cols], order=1, mode='constant', cval=0.0)
    fine[~inscribed_circle(fine_side)] = 0.0
    fine_sinogram = radon(fine * (pixel_mm / OVERSAMPLING), theta=angles, circle=True)
    aperture = np.array([0.25, 0.5, 0.25])
    integrated = ndimage.convolve1d(fine_sinogram, aperture, axis=0, mode='constant')
    return np.asarray(integrated[::OVERSAMPLING], dtype=np.float64)


def add_quantum_noise(
    line_integrals: FloatArray,
    incident_photons: float,
    electronic_noise: float,
    rng: np.random.Generator,
) -> FloatArray:
    """Measured line integrals (bins x views): Poisson counts of ``incident_photons`` per bin
    and view plus electronic noise, log-transformed. Counts below one photon (possible with
    electronic noise on a dark ray) are held at one, as a scanner's log step must."""
    expected = incident_photons * np.exp(-line_integrals)
    counts = rng.poisson(expected).astype(np.float64)
    counts += rng.normal(0.0, electronic_noise, size=counts.shape)
    return np.asarray(-np.log(np.maximum(counts, 1.0) / incident_photons))


def exposure_for_noise_index(
    line_integrals: FloatArray,
    body: npt.NDArray[np.bool_],
    pixel_mm: float,
    angles: FloatArray,
    noise_index_hu: float,
) -> float:
    """The full-dose photons per bin and view whose standard-kernel reconstruction has
    ``noise_index_hu`` of noise SD in ``body`` (a mask of the reconstruction grid).

    A log-transformed Poisson count has variance exp(p) / N at line integral p (to first
    order), so the reconstruction's noise variance is exactly proportional to 1 / N: one
    reconstruction of that noise at a trial N gives the N that meets the index. Its generator
    is fixed, so every condition of a slice gets the same exposure.
    """
    trial = 1.0e5
    noise = np.random.default_rng(0).standard_normal(line_integrals.shape)
    noise *= np.sqrt(np.exp(line_integrals) / trial)
    noise_hu = reconstruct(noise, pixel_mm, angles, 'standard') / MU_WATER_PER_MM * 1000.0
    return trial * float(noise_hu[body].std() / noise_index_hu) ** 2


def reconstruct(
    sinogram: FloatArray, pixel_mm: float, angles: FloatArray, kernel: str
) -> FloatArray:
    """Filtered back-projection with the kernel's filter; attenuation in /mm."""
    image = iradon(
        sinogram,
        theta=angles,
        filter_name=KERNEL_FILTERS[kernel],
        circle=True,
        preserve_range=True,
    )
    return np.asarray(image / pixel_mm, dtype=np.float64)


def simulate_slice(
    hu: FloatArray,
    pixel_mm: float,
    condition: ScanCondition,
    scanner: ScannerModel,
    rng: np.random.Generator | None,
) -> FloatArray:
    """``hu`` (a 2-D slice) reconstructed under ``condition``; noise-free when ``rng`` is None.

    The slice is padded with air to a square; outside the reconstruction circle the result is
    air, as on a scanner.
    """
    height, width = hu.shape
    side = _field_of_view(hu)
    square = np.full((side, side), AIR_HU)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = hu
    circle = inscribed_circle(side)
    mu = np.where(circle, hu_to_attenuation(square), 0.0)
    angles = view_angles(side, scanner.views)
    sinogram = forward_project(mu, pixel_mm, angles)
    if rng is not None:
        body = circle & (square > BODY_HU)
        full_dose = exposure_for_noise_index(
            sinogram, body if body.any() else circle, pixel_mm, angles, scanner.noise_index_hu
        )
        sinogram = add_quantum_noise(
            sinogram, full_dose * condition.dose, scanner.electronic_noise, rng
        )
    image = attenuation_to_hu(reconstruct(sinogram, pixel_mm, angles, condition.kernel))
    image[~circle] = AIR_HU
    return np.asarray(image[top : top + height, left : left + width])


def _field_of_view(hu: FloatArray) -> int:
    """The square grid's side: the slice's own when everything outside its inscribed circle
    is air (a scanner's field of view), else its diagonal, so that no tissue is cut."""
    height, width = hu.shape
    side = max(height, width) + 2
    side += side % 2
    top, left = (side - height) // 2, (side - width) // 2
    outside = ~inscribed_circle(side)[top : top + height, left : left + width]
    if np.any(hu[outside] > AIR_HU + 100.0):
        side = math.ceil(math.hypot(height, width)) + 2
        side += side % 2
    return side


def simulate_volume(
    hu: FloatArray,
    axial_axis: int,
    pixel_mm: float,
    condition: ScanCondition,
    scanner: ScannerModel,
    seed: int | None,
) -> FloatArray:
    """Every slice along ``axial_axis`` simulated; slice ``i`` draws its noise from the seed
    sequence ``(seed, i)``, so a volume's result does not depend on how it is split up."""
    slices = np.moveaxis(hu.astype(np.float64), axial_axis, 0)
    out = np.empty_like(slices)
    for index, hu_slice in enumerate(slices):
        rng = None if seed is None else np.random.default_rng([seed, index])
        out[index] = simulate_slice(hu_slice, pixel_mm, condition, scanner, rng)
    return np.moveaxis(out, 0, axial_axis)


def radial_noise_power_spectrum(
    noise_rois: FloatArray, pixel_mm: float, bins: int = 32
) -> tuple[FloatArray, FloatArray]:
    """The 2-D noise power spectrum of noise-only ROIs (n x N x N), radially averaged.

    Returns the bin centres in cycles/mm (up to Nyquist) and the NPS in HU^2 mm^2; each ROI's
    mean is removed first (ICRU 87's definition).
    """
    rois = noise_rois - noise_rois.mean(axis=(1, 2), keepdims=True)
    side = rois.shape[-1]
    spectrum = np.mean(np.abs(np.fft.fftshift(np.fft.fft2(rois), axes=(1, 2))) ** 2, axis=0)
    spectrum *= pixel_mm**2 / (side * side)
    frequencies = np.fft.fftshift(np.fft.fftfreq(side, d=pixel_mm))
    fy, fx = np.meshgrid(frequencies, frequencies, indexing='ij')
    radius = np.hypot(fy, fx)
    nyquist = 0.5 / pixel_mm
    edges = np.linspace(0.0, nyquist, bins + 1)
    index = np.digitize(radius.ravel(), edges) - 1
    valid = (index >= 0) & (index < bins)
    sums = np.bincount(index[valid], weights=spectrum.ravel()[valid], minlength=bins)
    counts = np.bincount(index[valid], minlength=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    return centres, sums / np.maximum(counts, 1)
