"""Tabulated X-ray data for DRRs: tube spectra and mass attenuation, read from mrctprep/data.

``drr_spectra.tsv``: the MC-GPU spectra DeepDRR ships (60, 90, 120 kVp); ``drr_mass_attenuation
.tsv``: NIST's mu/rho for dry air, ICRU-44 soft tissue and ICRU-44 cortical bone. Each file
names its source in its header. Plain numpy, so that settings can be checked without torch.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import numpy as np

#: Material channels, in the order of every per-material array.
MATERIALS = ('air', 'soft tissue', 'bone')
#: DeepDRR's thresholding: air <= -800 HU < soft tissue <= 350 HU < bone.
AIR_MAX_HU = -800.0
BONE_MIN_HU = 350.0
#: Tube voltage -> column of ``drr_spectra.tsv`` and its aluminium filtration (mm).
SPECTRA = {60: ('kvp60_al3.5mm', 3.5), 90: ('kvp90_al4.0mm', 4.0), 120: ('kvp120_al4.3mm', 4.3)}

_DATA = files('mrctprep') / 'data'


@dataclass(frozen=True)
class Spectrum:
    """A tube spectrum: bin energies (keV) and the fraction of photons in each bin."""

    kvp: int
    filtration_mm_al: float
    energies_kev: np.ndarray
    photon_fractions: np.ndarray

    @property
    def mean_energy_kev(self) -> float:
        return float(np.sum(self.energies_kev * self.photon_fractions))

    @property
    def energy_weights(self) -> np.ndarray:
        """Fraction of the beam's energy in each bin: what an energy-integrating detector sees."""
        weights = self.energies_kev * self.photon_fractions
        return weights / weights.sum()


def load_spectrum(kvp: int) -> Spectrum:
    """The MC-GPU spectrum DeepDRR uses at ``kvp`` (60, 90 or 120), normalised to 1 photon."""
    if kvp not in SPECTRA:
        raise ValueError(f'no spectrum for {kvp} kVp; available: {sorted(SPECTRA)}')
    column, filtration = SPECTRA[kvp]
    rows = [row for row in _read_table('drr_spectra.tsv') if row[column]]
    energies = np.array([float(row['energy_keV']) for row in rows])
    # The source's last bin (at the kVp) is slightly negative: no photons there.
    counts = np.clip(np.array([float(row[column]) for row in rows]), 0.0, None)
    return Spectrum(kvp, filtration, energies, counts / counts.sum())


def mass_attenuation(material: str, energies_kev: np.ndarray) -> np.ndarray:
    """mu/rho (cm^2/g) of ``material`` at ``energies_kev``, log-log interpolated (NIST table)."""
    table = _attenuation_table(material)
    log_energy = np.log(np.asarray(energies_kev, dtype=np.float64) / 1000.0)
    return np.exp(np.interp(log_energy, np.log(table[:, 0]), np.log(table[:, 1])))


def attenuation_matrix(spectrum: Spectrum) -> np.ndarray:
    """mu/rho (cm^2/g) per energy bin and material, shape (bins, len(MATERIALS))."""
    return np.stack([mass_attenuation(m, spectrum.energies_kev) for m in MATERIALS], axis=1)


def effective_mass_attenuation(spectrum: Spectrum) -> np.ndarray:
    """Energy-weighted mean mu/rho per material (cm^2/g).

    The thin-object limit of the log-attenuation an energy-integrating detector measures, so
    that plain line integrals and polyenergetic intensities weigh the spectrum alike.
    """
    return spectrum.energy_weights @ attenuation_matrix(spectrum)


def _read_table(name: str) -> list[dict[str, str]]:
    text = (_DATA / name).read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith('#')]
    return list(csv.DictReader(lines, delimiter='\t'))


@cache
def _attenuation_table(material: str) -> np.ndarray:
    rows = [row for row in _read_table('drr_mass_attenuation.tsv') if row['material'] == material]
    if not rows:
        raise ValueError(f'no attenuation table for {material!r}')
    return np.array([[float(row['energy_MeV']), float(row['mu_over_rho_cm2_g'])] for row in rows])
