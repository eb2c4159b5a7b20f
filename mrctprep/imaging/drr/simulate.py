"""From a CT in HU to DRR images with their geometry: the physics, geometry and renderer joined."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nibabel as nb
import numpy as np
import torch

from mrctprep.imaging.drr.geometry import ViewGeometry, table_from_patient, view_geometry
from mrctprep.imaging.drr.physics import (
    add_poisson_noise,
    hu_to_density,
    label_map_materials,
    material_densities,
    neglog,
    polyenergetic_intensity,
    threshold_materials,
)
from mrctprep.imaging.drr.presets import DRRSettings
from mrctprep.imaging.drr.renderer import Projector
from mrctprep.imaging.drr.tables import (
    MATERIALS,
    Spectrum,
    effective_mass_attenuation,
    load_spectrum,
)

#: Floats of path integrals held at once (views x channels x pixels): bounds memory.
_BATCH_VALUES = 1 << 25
_MM_PER_CM = 10.0

OUTPUT_UNITS = {
    'neglog': "DeepDRR's neglog of the intensity: -log(I + min(I) + 0.01), min-max scaled "
    'to [0, 1] per image',
    'line-integral': 'line integral of linear attenuation, sum over materials of mu/rho '
    '(energy-weighted over the spectrum) times the density path integral; dimensionless',
    'intensity': 'energy reaching the pixel per photon emitted toward it, keV (polyenergetic '
    'Beer-Lambert over the spectrum, no scatter)',
}


@dataclass(frozen=True)
class DRRImage:
    """One rendered view: the image (rows, columns; row 0 at the top) and its sidecar facts."""

    label: str
    image: np.ndarray
    geometry: ViewGeometry
    metadata: dict[str, Any]


def volume_centre(img: nb.Nifti1Image) -> np.ndarray:
    """World position (mm) of the centre of the voxel grid."""
    return nb.affines.apply_affine(img.affine, (np.array(img.shape[:3]) - 1) / 2)


def isocentre_in_world(img: nb.Nifti1Image, settings: DRRSettings) -> np.ndarray:
    """The C-arm isocentre: the volume's centre plus the preset's table-frame offset."""
    offset = table_from_patient(settings.placement).T @ np.asarray(settings.isocentre_offset_mm)
    return volume_centre(img) + offset


def simulate_drr(
    ct: nb.Nifti1Image,
    settings: DRRSettings,
    *,
    device: str = 'cpu',
    seed: int = 0,
    label_map: np.ndarray | None = None,
    label_materials: Mapping[int, str] | None = None,
) -> list[DRRImage]:
    """Render every view of ``settings`` from a CT in HU (any voxel order; world = its affine).

    With ``label_map`` (same grid) and ``label_materials`` ({label: material}), listed labels
    set the material instead of the HU thresholds.
    """
    spectrum = load_spectrum(settings.kvp)
    projector = Projector(
        _attenuation_volume(ct, settings, spectrum, device, label_map, label_materials), ct.affine
    )
    isocentre = isocentre_in_world(ct, settings)
    geometries = [
        view_geometry(settings.carm, settings.placement, isocentre, *view)
        for view in settings.views
    ]
    noise = torch.Generator().manual_seed(seed)
    channels = projector.volume.shape[0]
    per_batch = max(1, _BATCH_VALUES // (channels * settings.carm.pixels**2))
    images = []
    for start in range(0, len(geometries), per_batch):
        integrals = projector.integrate(geometries[start : start + per_batch]) / _MM_PER_CM
        for path_integrals in integrals:
            images.append(_detector_values(path_integrals, settings, spectrum, noise))
    decomposition = 'label map' if label_map is not None else 'HU thresholds'
    return [
        DRRImage(
            label=label,
            image=image,
            geometry=geometry,
            metadata=_view_metadata(
                settings, spectrum, label, view, geometry, isocentre, decomposition, device
            ),
        )
        for label, image, geometry, view in zip(
            settings.view_labels, images, geometries, settings.views, strict=True
        )
    ]


def _attenuation_volume(ct, settings, spectrum, device, label_map, label_materials):
    """What the rays integrate: per-material density (g/cm^3), or for plain line integrals the
    linear attenuation at the spectrum's effective mu/rho (1/cm), one channel."""
    hu = torch.as_tensor(np.asanyarray(ct.dataobj, dtype=np.float32), device=device)
    thresholds = {'air_max_hu': settings.air_max_hu, 'bone_min_hu': settings.bone_min_hu}
    if label_map is not None:
        labels = torch.as_tensor(np.asarray(label_map), device=device)
        materials = label_map_materials(hu, labels, label_materials or {}, **thresholds)
    else:
        materials = threshold_materials(hu, **thresholds)
    density = hu_to_density(hu)
    del hu
    if settings.output != 'line-integral':
        return material_densities(density, materials)
    coefficients = torch.as_tensor(
        effective_mass_attenuation(spectrum), dtype=density.dtype, device=device
    )
    return (density * coefficients[materials.long()])[None]


def _detector_values(
    path_integrals: torch.Tensor,
    settings: DRRSettings,
    spectrum: Spectrum,
    noise: torch.Generator,
) -> np.ndarray:
    if settings.output == 'line-integral':
        return path_integrals[0].cpu().numpy()
    intensity, probability = polyenergetic_intensity(path_integrals, spectrum)
    if settings.noise_photons:
        intensity = add_poisson_noise(intensity, probability, settings.noise_photons, noise)
    if settings.output == 'neglog':
        intensity = neglog(intensity)
    return intensity.cpu().numpy()


def _view_metadata(settings, spectrum, label, view, geometry, isocentre, decomposition, device):
    carm = settings.carm
    orbital, angulation = view
    return {
        'DRRView': label,
        'DRRPreset': settings.preset,
        'OrbitalAngleDegrees': orbital,
        'AngulationAngleDegrees': angulation,
        'AngleConvention': "DeepDRR MobileCArm: scipy Rotation.from_euler('xy', [orbital, "
        'angulation]) about the isocentre; orbital (LAO/RAO) about the table axis, '
        'angulation (CRA/CAU) about the left-right axis; (0, 0) puts the source below the '
        'table. Head-first supine: orbital > 0 is RAO, angulation > 0 is CAU',
        'PatientPlacement': settings.placement.name,
        'IsocentreWorldMM': _rounded(isocentre),
        'SourceToDetectorDistanceMM': carm.source_to_detector_mm,
        'SourceToIsocentreDistanceMM': carm.source_to_isocentre_mm,
        'DetectorPixels': [carm.pixels, carm.pixels],
        'PixelSpacingMM': [carm.pixel_size_mm, carm.pixel_size_mm],
        'ProjectionMatrix': _rounded(geometry.projection_matrix, 9),
        'ProjectionMatrixConvention': 'world RAS mm (the CT affine space, homogeneous) to '
        'homogeneous (column, row) index of the image array: PNG pixel (x, y), NIfTI voxel '
        '(i, j); pixel centres at integers, row 0 at the top',
        'SourcePosition': _rounded(geometry.source),
        'DetectorFirstPixelWorldMM': _rounded(geometry.first_pixel),
        'Output': settings.output,
        'Units': OUTPUT_UNITS[settings.output],
        'Spectrum': {
            'kVp': spectrum.kvp,
            'FiltrationMMAl': spectrum.filtration_mm_al,
            'MeanEnergyKeV': round(spectrum.mean_energy_kev, 3),
            'Source': 'MC-GPU spectrum files (Badal and Badano 2009), as shipped by DeepDRR',
        },
        'Materials': list(MATERIALS),
        'MaterialDecomposition': decomposition,
        'HUThresholds': {'AirMax': settings.air_max_hu, 'BoneMin': settings.bone_min_hu},
        'DensityFromHU': 'DeepDRR: max(min(0.001029 HU + 1.030, 0.0005886 HU + 1.03), 0) g/cm3',
        'MassAttenuation': 'NIST XCOM (Hubbell and Seltzer): dry air, ICRU-44 soft tissue, '
        'ICRU-44 cortical bone; log-log interpolation',
        'EffectiveMassAttenuationCM2PerG': dict(
            zip(MATERIALS, _rounded(effective_mass_attenuation(spectrum), 6), strict=True)
        ),
        'PoissonNoisePhotonsPerPixel': settings.noise_photons,
        'Scatter': False,
        'Projector': 'Joseph: one trilinear sample per voxel plane along each ray (torch '
        'grid_sample); rays from the source onward',
        'Device': device,
    }


def _rounded(values, decimals: int = 4):
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()


def to_png16(image: np.ndarray, output: str) -> tuple[np.ndarray, float]:
    """16-bit PNG pixels ``round(value x scale)`` and the scale: neglog's [0, 1] fills the
    range; the other outputs map their image maximum to 65535."""
    full_scale = 1.0 if output == 'neglog' else float(image.max())
    scale = 65535.0 / full_scale if full_scale > 0 else 0.0
    return np.clip(np.rint(image * scale), 0, 65535).astype(np.uint16), scale
