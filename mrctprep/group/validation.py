"""Held-out participants, and the score by which IGUANe's best universal generator is kept.

IGUANe's authors keep the generator that scores best on validation data every five epochs
(their ``best_genUniv``), because adversarial training drifts: on the demo, the
travelling-subject difference fell 11.9 % by step 2,000 and was back to -4.2 % by step 5,000.
The score here, lower is better, adds

- the site effect of the held-out images' regional brain means after harmonization (mean eta
  squared over the 24 regions of the group table: 0 when the site explains nothing);
- where participants.tsv has a ``traveller`` column (the same value for the same person
  scanned at several sites), the mean absolute difference in the brain between a traveller's
  harmonized images, as a fraction of the same difference before (1: no better than raw);
- a penalty for images whose structure the generator changed: ``SSIM_PENALTY`` x the mean
  shortfall of SSIM to the input, in the brain, below ``SSIM_FLOOR``. Mapping an image's
  contrast onto its travelling partner's, the ideal harmonization of the demo, costs SSIM
  0.88-0.89 by itself (benchmarks/mr_harmonize.py), so only changes beyond any site effect
  fall below 0.85.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import numpy.typing as npt
import pandas as pd

from mrctprep.core.errors import InputError
from mrctprep.group.harmonization import site_effect
from mrctprep.group.sites import ParticipantInfo
from mrctprep.imaging.regions import regional_means
from mrctprep.imaging.similarity import structural_similarity
from mrctprep.models.iguane import IguaneGenerator, harmonize_volume
from mrctprep.models.inference import Shape3D

LOGGER = logging.getLogger(__name__)

SSIM_FLOOR = 0.85
SSIM_PENALTY = 10.0
#: Held out by default: a quarter of each site's participants, at least two (the site effect
#: needs two images per site), and none anywhere when a site has fewer than this many.
HOLD_OUT_FRACTION = 0.25
MIN_HELD_OUT = 2
MIN_PARTICIPANTS_TO_HOLD_OUT = 6


def choose_held_out(
    participants: Mapping[str, ParticipantInfo], per_site: int | None, seed: int
) -> set[str]:
    """The participants kept out of training, ``per_site`` of each site (None: the default
    share). Travellers seen at every site are taken first, at all their sites, so that the
    travelling-subject difference can be scored."""
    by_site: dict[str, list[str]] = {}
    for label, info in sorted(participants.items()):
        by_site.setdefault(info.site, []).append(label)
    wanted = per_site if per_site is not None else _default_per_site(by_site)
    if wanted == 0:
        return set()
    for site, labels in by_site.items():
        if wanted >= len(labels):
            raise InputError(
                f'site {site} has {len(labels)} participant(s): holding out {wanted} leaves '
                'none to train on'
            )
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for traveller in rng.permutation(sorted(_travellers_at_every_site(participants))):
        members = [p for p, info in participants.items() if info.traveller == traveller]
        if all(_count(held, participants, site) < wanted for site in by_site):
            held.update(members)
    for site, labels in by_site.items():
        free = [label for label in labels if label not in held]
        missing = wanted - _count(held, participants, site)
        held.update(rng.permutation(free)[: max(missing, 0)].tolist())
    return held


def _default_per_site(by_site: Mapping[str, Sequence[str]]) -> int:
    smallest = min(len(labels) for labels in by_site.values())
    if smallest < MIN_PARTICIPANTS_TO_HOLD_OUT:
        return 0
    return max(MIN_HELD_OUT, round(HOLD_OUT_FRACTION * smallest))


def _travellers_at_every_site(participants: Mapping[str, ParticipantInfo]) -> list[str]:
    sites = {info.site for info in participants.values()}
    seen: dict[str, set[str]] = {}
    for info in participants.values():
        if info.traveller:
            seen.setdefault(info.traveller, set()).add(info.site)
    return [traveller for traveller, at in seen.items() if at == sites]


def _count(held: set[str], participants: Mapping[str, ParticipantInfo], site: str) -> int:
    return sum(participants[label].site == site for label in held)


@dataclass(frozen=True)
class ValidationImage:
    """A held-out model input (median-500 brain, MNI grid) and its participant."""

    path: Path
    participant: ParticipantInfo


class HarmonizationScore:
    """Scores a generator on held-out images (see the module docstring)."""

    def __init__(
        self,
        images: Sequence[ValidationImage],
        generator: IguaneGenerator,
        *,
        device: str,
        tile: Shape3D | None,
    ) -> None:
        self.images, self.generator, self.device, self.tile = list(images), generator, device, tile
        loaded = [nb.Nifti1Image.from_filename(image.path) for image in self.images]
        self.affines = [img.affine for img in loaded]
        self.inputs = [np.asanyarray(img.dataobj, np.float32) for img in loaded]
        self.pairs = [
            (i, j)
            for i, j in itertools.combinations(range(len(self.images)), 2)
            if _same_traveller(self.images[i].participant, self.images[j].participant)
        ]
        self.raw_differences = [self._difference(self.inputs, i, j) for i, j in self.pairs]
        self.raw_site_effect = self._site_effect(self.inputs)

    def __call__(self) -> dict[str, float]:
        outputs = [
            harmonize_volume(data, self.generator, self.device, tile=self.tile)
            for data in self.inputs
        ]
        similarities = [
            structural_similarity(output, data, data > 0)
            for output, data in zip(outputs, self.inputs, strict=True)
        ]
        shortfall = float(np.mean([max(0.0, SSIM_FLOOR - s) for s in similarities]))
        figures = {'site_effect': self._site_effect(outputs), 'ssim_min': min(similarities)}
        if self.pairs:
            ratios = [
                self._difference(outputs, i, j) / raw
                for (i, j), raw in zip(self.pairs, self.raw_differences, strict=True)
            ]
            figures['travelling_difference'] = float(np.mean(ratios))
        # the site effect is NaN with fewer than two held-out images per site: left out
        terms = [v for k, v in figures.items() if k != 'ssim_min' and not np.isnan(v)]
        return {'score': sum(terms) + SSIM_PENALTY * shortfall, **figures}

    def _site_effect(self, volumes: Sequence[npt.NDArray[np.float32]]) -> float:
        rows = [
            {'image': k, 'site': image.participant.site, 'region': region, 'value': mean}
            for k, (image, volume, affine) in enumerate(
                zip(self.images, volumes, self.affines, strict=True)
            )
            for region, mean in regional_means(nb.Nifti1Image(volume, affine)).items()
        ]
        return site_effect(pd.DataFrame(rows), 'value')

    def _difference(self, volumes: Sequence[npt.NDArray[np.float32]], i: int, j: int) -> float:
        brain = (self.inputs[i] > 0) & (self.inputs[j] > 0)
        return float(np.abs(volumes[i][brain] - volumes[j][brain]).mean())


def _same_traveller(first: ParticipantInfo, second: ParticipantInfo) -> bool:
    return (
        bool(first.traveller)
        and first.traveller == second.traveller
        and (first.site != second.site)
    )
