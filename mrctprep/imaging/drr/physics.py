"""DeepDRR's X-ray physics on tensors: HU to density, materials, Beer-Lambert, noise, neglog.

The chain (Unberath et al., DeepDRR, MICCAI 2018): each voxel's density follows from its HU
by a two-segment line; each voxel belongs to one material (air, soft tissue, bone) by HU
thresholds or a label map; a ray collects one path integral of density per material
(g/cm^2); the polyenergetic Beer-Lambert law turns those into the energy reaching a pixel.
The tabulated data (spectra, mass attenuation) are read by :mod:`.tables`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mrctprep.imaging.drr.tables import (
    AIR_MAX_HU,
    BONE_MIN_HU,
    MATERIALS,
    Spectrum,
    attenuation_matrix,
)

#: DeepDRR's neglog offset (``deepdrr.utils.neglog``'s epsilon).
NEGLOG_EPSILON = 0.01


def hu_to_density(hu: torch.Tensor) -> torch.Tensor:
    """Mass density (g/cm^3) from HU with DeepDRR's curve (``conv_hu_to_density``).

    Two lines fitted to (HU, g/cm^3) pairs from air to cortical bone; the lower one holds
    below about 0 HU, the upper one above; never negative.
    """
    lower = 0.001029 * hu + 1.030
    upper = 0.0005886 * hu + 1.03
    return torch.clamp(torch.minimum(lower, upper), min=0.0)


def threshold_materials(
    hu: torch.Tensor, *, air_max_hu: float = AIR_MAX_HU, bone_min_hu: float = BONE_MIN_HU
) -> torch.Tensor:
    """Material index per voxel (0 air, 1 soft tissue, 2 bone) by DeepDRR's HU thresholds."""
    if not air_max_hu < bone_min_hu:
        raise ValueError(f'air threshold {air_max_hu} must lie below bone threshold {bone_min_hu}')
    materials = torch.ones(hu.shape, dtype=torch.uint8, device=hu.device)
    materials[hu <= air_max_hu] = 0
    materials[hu > bone_min_hu] = 2
    return materials


def label_map_materials(
    hu: torch.Tensor,
    labels: torch.Tensor,
    label_materials: Mapping[int, str],
    *,
    air_max_hu: float = AIR_MAX_HU,
    bone_min_hu: float = BONE_MIN_HU,
) -> torch.Tensor:
    """Material index per voxel from a label map (e.g. a segmentation) on the CT's grid.

    ``label_materials`` maps label values to material names; voxels whose label is not
    listed (background included) keep the material of the HU thresholds, so a map of bones
    alone refines the bone class without having to describe air and soft tissue.
    """
    if labels.shape != hu.shape:
        raise ValueError(f'label map shape {tuple(labels.shape)} differs from CT {hu.shape}')
    unknown = set(label_materials.values()) - set(MATERIALS)
    if unknown:
        raise ValueError(f'unknown materials {sorted(unknown)}; use {", ".join(MATERIALS)}')
    materials = threshold_materials(hu, air_max_hu=air_max_hu, bone_min_hu=bone_min_hu)
    for label, material in label_materials.items():
        materials[labels == int(label)] = MATERIALS.index(material)
    return materials


def material_densities(density: torch.Tensor, materials: torch.Tensor) -> torch.Tensor:
    """One density volume per material, (len(MATERIALS), *density.shape): rho where it is m."""
    return torch.stack([density * (materials == index) for index in range(len(MATERIALS))])


def polyenergetic_intensity(
    path_integrals: torch.Tensor, spectrum: Spectrum
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy per emitted photon reaching each pixel (keV), and the photon survival probability.

    Beer-Lambert summed over the spectrum, as DeepDRR's projector: intensity
    ``sum_E E p(E) exp(-sum_m (mu/rho)_m(E) L_m)`` and probability
    ``sum_E p(E) exp(...)``. ``path_integrals``: (len(MATERIALS), ...) in g/cm^2.
    """
    dtype, device = path_integrals.dtype, path_integrals.device
    coefficients = torch.as_tensor(attenuation_matrix(spectrum), dtype=dtype, device=device)
    fractions = torch.as_tensor(spectrum.photon_fractions, dtype=dtype, device=device)
    energies = torch.as_tensor(spectrum.energies_kev, dtype=dtype, device=device)
    intensity = torch.zeros(path_integrals.shape[1:], dtype=dtype, device=device)
    probability = torch.zeros_like(intensity)
    for bin_index in range(len(energies)):
        transmitted = fractions[bin_index] * torch.exp(
            -torch.tensordot(coefficients[bin_index], path_integrals, dims=1)
        )
        probability += transmitted
        intensity += energies[bin_index] * transmitted
    return intensity, probability


def add_poisson_noise(
    intensity: torch.Tensor,
    photon_probability: torch.Tensor,
    photons_per_pixel: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Quantum noise: each pixel's detected photons are Poisson, its energy scaled with them.

    A pixel that ``photons_per_pixel`` emitted photons aim at receives on average
    ``photons_per_pixel * photon_probability`` of them; the intensity is multiplied by the
    ratio of the drawn count to that mean (DeepDRR's ``add_noise`` model).
    """
    expected = photons_per_pixel * photon_probability
    counts = torch.poisson(expected.cpu(), generator=generator).to(expected.device)
    return intensity * counts / expected.clamp(min=torch.finfo(expected.dtype).tiny)


def neglog(intensity: torch.Tensor, epsilon: float = NEGLOG_EPSILON) -> torch.Tensor:
    """DeepDRR's ``neglog`` of one image: add its minimum plus epsilon, -log, min-max to [0, 1].

    DeepDRR adds the minimum (not subtracts it) before the logarithm; kept as is, since it
    shapes every DRR the thesis made. A constant image becomes 0.
    """
    shifted = intensity + intensity.min() + epsilon
    logged = -torch.log(shifted)
    low, high = logged.min(), logged.max()
    if high <= low:
        return torch.zeros_like(logged)
    return (logged - low) / (high - low)
