"""DRR settings: DeepDRR's default C-arm and the GENSYN thesis' settings, with overrides.

From DeepDRR v1.1.3 (arcadelab/deepdrr) and the GENSYN thesis' code
(CasperAntonPoulsen/Thesis-Synthex). The thesis segmented most CTs with DeepDRR's V-Net; these
presets use the HU thresholds (its final centre script's choice), since the V-Net weights are
not shipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mrctprep.imaging.drr.geometry import (
    CArm,
    Placement,
    gensyn_angled_views,
    unique_view_labels,
    view_grid,
)
from mrctprep.imaging.drr.tables import AIR_MAX_HU, BONE_MIN_HU, SPECTRA

OUTPUTS = ('neglog', 'line-integral', 'intensity')


@dataclass(frozen=True)
class DRRSettings:
    """Everything that decides a DRR: C-arm, placement, views, physics and output."""

    preset: str
    carm: CArm
    placement: Placement = Placement()
    #: Isocentre minus the volume's centre, in the table frame (mm; z up from the table).
    isocentre_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: (orbital, angulation) in degrees, one pair per view.
    views: tuple[tuple[float, float], ...] = ((0.0, 0.0),)
    kvp: int = 90
    output: str = 'neglog'
    noise_photons: int | None = None
    air_max_hu: float = AIR_MAX_HU
    bone_min_hu: float = BONE_MIN_HU

    def __post_init__(self):
        if self.kvp not in SPECTRA:
            raise ValueError(f'no {self.kvp} kVp spectrum; choose one of {sorted(SPECTRA)}')
        if self.output not in OUTPUTS:
            raise ValueError(f'unknown DRR output {self.output!r}; choose one of {OUTPUTS}')
        if not self.views:
            raise ValueError('a DRR needs at least one view')
        unique_view_labels(self.placement, self.views)

    @property
    def view_labels(self) -> list[str]:
        return unique_view_labels(self.placement, self.views)


#: deepdrr.MobileCArm's defaults (Siemens Cios Fusion): 1536 x 1536 px of 0.194 mm.
_DEEPDRR_CARM = CArm(
    source_to_detector_mm=1020, source_to_isocentre_mm=530, pixels=1536, pixel_size_mm=0.194
)

PRESETS = {
    'deepdrr': DRRSettings(preset='deepdrr', carm=_DEEPDRR_CARM),
    # Thesis, RAD-ChestCT centre view (final script): default C-arm distances, 2500 x 0.2 mm,
    # isocentre 750 mm below the volume's centre (the chest lies beyond the detector).
    'gensyn-center': DRRSettings(
        preset='gensyn-center',
        carm=replace(_DEEPDRR_CARM, pixels=2500, pixel_size_mm=0.2),
        isocentre_offset_mm=(0.0, 0.0, -750.0),
    ),
    # Thesis, RAD-ChestCT angled views: SDD = source-isocentre = 2000 mm, 2500 x 0.18 mm.
    'gensyn-angled': DRRSettings(
        preset='gensyn-angled',
        carm=CArm(
            source_to_detector_mm=2000,
            source_to_isocentre_mm=2000,
            pixels=2500,
            pixel_size_mm=0.18,
        ),
        views=tuple(gensyn_angled_views()),
    ),
}


def resolve_drr_settings(
    preset: str = 'deepdrr',
    *,
    angles: Sequence[Sequence[float]] = (),
    grid: Sequence[float] = (),
    kvp: int | None = None,
    output: str | None = None,
    detector_pixels: int | None = None,
    pixel_size_mm: float | None = None,
    source_to_detector_mm: float | None = None,
    source_to_isocentre_mm: float | None = None,
    noise_photons: int | None = None,
) -> DRRSettings:
    """A preset with overrides; ``angles`` or ``grid`` replace its views."""
    if preset not in PRESETS:
        raise ValueError(f'unknown DRR preset {preset!r}; choose one of {sorted(PRESETS)}')
    settings = PRESETS[preset]
    carm = replace(
        settings.carm,
        **_given(
            pixels=detector_pixels,
            pixel_size_mm=pixel_size_mm,
            source_to_detector_mm=source_to_detector_mm,
            source_to_isocentre_mm=source_to_isocentre_mm,
        ),
    )
    changes = {'carm': carm, **_given(kvp=kvp, output=output, noise_photons=noise_photons)}
    if angles:
        changes['views'] = tuple((float(a), float(b)) for a, b in angles)
    elif grid:
        changes['views'] = tuple(view_grid(*grid))
    return replace(settings, **changes)


def _given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that are not None: the fields an override changes."""
    return {name: value for name, value in values.items() if value is not None}
