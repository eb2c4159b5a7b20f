"""UniRes on images: co-register the scans, choose the grid, fit, and describe the result.

The scans of a subject/session are grouped into channels (contrasts: T1w, T2w, FLAIR, PDw,
CT); several scans of one channel (runs) are repeats of it, all explained by one image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nibabel as nb
import numpy as np
import torch
import torch.nn.functional as F

from mrctprep.imaging.axes import three
from mrctprep.imaging.registration import (
    RigidTransform,
    mni152_brain_template,
    resample_to_grid,
    rigid_register,
)
from mrctprep.imaging.superres.grids import OutputGrid, common_grid, scan_grid
from mrctprep.imaging.superres.noise import AIR, NoiseEstimate, estimate_noise
from mrctprep.imaging.superres.operators import Projection, ScanGeometry, grid_sample_theta
from mrctprep.imaging.superres.solver import Scan, SolverSettings, fit

METHODS = ('unires', 'linear')
#: ANTs' full rigid schedule: QuickRigid leaves ~1 degree between thick-slice scans.
COREGISTRATION_TYPE = 'Rigid'


@dataclass(frozen=True)
class SuperResSettings:
    voxel_size: float = 1.0
    method: str = 'unires'
    common_grid: bool = False
    max_iter: int = SolverSettings.max_iter
    coregister: bool = True
    slice_gap: float = 0.0
    #: UniRes's ``--scale``: correct odd/even slice intensities of interleaved MR scans.
    interleaved: bool = False
    device: str = 'cpu'
    seed: int = 0


@dataclass(frozen=True)
class InputScan:
    """One input image, the channel it belongs to (its suffix) and its modality."""

    img: nb.Nifti1Image
    channel: str
    modality: str
    name: str = ''


@dataclass
class ChannelResult:
    """A channel's super-resolved image, its first scan on the same grid (nearest neighbour,
    for the QC figure) and the sidecar fields."""

    channel: str
    image: nb.Nifti1Image
    input_view: nb.Nifti1Image
    metadata: dict = field(default_factory=dict)


def modality_of(suffix: str) -> str:
    """``'ct'`` for ``_ct`` images (CT mode), ``'mr'`` for every MR contrast."""
    return 'ct' if suffix.lower() == 'ct' else 'mr'


def super_resolve(
    scans: list[InputScan],
    settings: SuperResSettings = SuperResSettings(),
    *,
    grid: OutputGrid | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ChannelResult]:
    """One image per channel on one isotropic grid (``grid``, or chosen from the settings)."""
    started = time.perf_counter()
    device = torch.device(settings.device)
    affines, registration = _coregistered_affines(scans, settings)
    registered = time.perf_counter()
    if grid is None:
        grid = _output_grid(scans, affines, settings)
    inputs = _Inputs(
        scans,
        [torch.as_tensor(scan.img.get_fdata(dtype=np.float32), device=device) for scan in scans],
        affines,
    )
    initial = [
        _mean_trilinear([inputs.data[i] for i in members], [affines[i] for i in members], grid)
        for members in inputs.members.values()
    ]
    common: dict[str, Any] = {
        'Method': settings.method,
        'VoxelSize': settings.voxel_size,
        'CommonGrid': settings.common_grid,
        'Device': str(device),
        **grid.to_metadata(),
        'Channels': inputs.channels,
        'Inputs': [scan.name for scan in scans],
        'Coregistration': registration,
    }
    if settings.method == 'linear':
        images = initial
        per_channel: list[dict[str, Any]] = [{} for _ in inputs.channels]
    else:
        images, fit_metadata, per_channel = _unires(inputs, grid, initial, settings, progress)
        common.update(fit_metadata)
    common['CoregistrationSeconds'] = round(registered - started, 2)
    common['Seconds'] = round(time.perf_counter() - started, 2)
    return [
        _channel_result(inputs, channel, images[k], grid, {**common, **per_channel[k]})
        for k, channel in enumerate(inputs.channels)
    ]


@dataclass(frozen=True)
class _Inputs:
    """The scans, their voxels on the device and their co-registered affines."""

    scans: list[InputScan]
    data: list[torch.Tensor]
    affines: list[np.ndarray]

    @property
    def channels(self) -> list[str]:
        """The channels in the order of their first scan."""
        return list(dict.fromkeys(scan.channel for scan in self.scans))

    @property
    def members(self) -> dict[str, list[int]]:
        """Each channel's scans, by index."""
        return {
            c: [i for i, scan in enumerate(self.scans) if scan.channel == c] for c in self.channels
        }


def _unires(
    inputs: _Inputs,
    grid: OutputGrid,
    initial: list[torch.Tensor],
    settings: SuperResSettings,
    progress: Callable[[str], None] | None,
) -> tuple[list[torch.Tensor], dict[str, Any], list[dict[str, Any]]]:
    """UniRes's fit from ``initial``: the images, the fit's metadata and each channel's."""
    model = [
        [_observed_scan(inputs, i, grid, settings) for i in members]
        for members in inputs.members.values()
    ]
    solver_settings = SolverSettings(max_iter=settings.max_iter, interleaved=settings.interleaved)
    result = fit(model, initial, grid.voxel_size, solver_settings, progress=progress)
    images = result.images
    if len(inputs.scans) == 1:
        # UniRes's clean_fov: a single scan says nothing outside its field of view.
        outside = ~model[0][0].projection.field_of_view()
        images[0][outside] = AIR[inputs.scans[0].modality]
    fit_metadata = {
        'Iterations': result.iterations,
        'Converged': result.converged,
        'RegularisationSchedule': result.schedule,
        'Rho': round(result.rho, 6),
        'ObjectiveFirstLast': [round(result.objective[0], 3), round(result.objective[-1], 3)],
        'ConjugateGradientIterationsMean': round(float(np.mean(result.cg_iterations)), 2),
    }
    per_channel = [
        {
            'Lambda': round(result.lambdas[k], 8),
            'Noise': [
                {
                    'Input': inputs.scans[i].name,
                    **scan.noise.to_metadata(),
                    'SeparableOperator': scan.projection.is_separable,
                    **({} if scale is None else {'InterleaveScale': round(scale, 5)}),
                }
                for i, scan, scale in zip(
                    members, model[k], result.interleave_scales[k], strict=True
                )
            ],
        }
        for k, members in enumerate(inputs.members.values())
    ]
    return images, fit_metadata, per_channel


def _observed_scan(inputs: _Inputs, i: int, grid: OutputGrid, settings: SuperResSettings) -> Scan:
    """Scan ``i`` as the solver sees it: its voxels, forward model onto ``grid`` and noise."""
    scan, data, affine = inputs.scans[i], inputs.data[i], inputs.affines[i]
    projection = Projection(
        ScanGeometry(three(scan.img.shape[:3]), affine, settings.slice_gap),
        grid.shape,
        grid.affine,
        device=torch.device(settings.device),
    )
    return Scan(data, projection, _estimate_noise(scan, data, affine), scan.modality)


def _channel_result(
    inputs: _Inputs,
    channel: str,
    image: torch.Tensor,
    grid: OutputGrid,
    metadata: dict[str, Any],
) -> ChannelResult:
    """A channel's image as NIfTI, within its inputs' range, beside its first scan's view."""
    members = inputs.members[channel]
    # The range of the channel's inputs bounds the result (CT keeps its HU range).
    low = min(float(inputs.data[i].min()) for i in members)
    high = max(float(inputs.data[i].max()) for i in members)
    volume = image.clamp_(low, high).cpu().numpy().astype(np.float32)
    out = nb.Nifti1Image(volume, grid.affine)
    first = members[0]
    code = int(inputs.scans[first].img.header['sform_code']) or 1
    out.set_qform(grid.affine, code=code)
    out.set_sform(grid.affine, code=code)
    out.header.set_xyzt_units('mm')
    input_view = resample_to_grid(
        nb.Nifti1Image(inputs.data[first].cpu().numpy(), inputs.affines[first]),
        out,
        RigidTransform(np.eye(4)),
        interpolation='nearest',
    )
    return ChannelResult(channel, out, input_view, metadata)


def _estimate_noise(scan: InputScan, data: torch.Tensor, affine: np.ndarray) -> NoiseEstimate:
    voxel_size = three(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    try:
        return estimate_noise(data.cpu().numpy(), voxel_size, modality=scan.modality)
    except ValueError as exc:
        raise ValueError(f'{scan.name}: cannot estimate its noise: {exc}') from None


def _coregistered_affines(
    scans: list[InputScan], settings: SuperResSettings
) -> tuple[list[np.ndarray], list[dict]]:
    """Every scan's affine after rigid registration to the first (only affines change)."""
    affines = [scan.img.affine for scan in scans]
    if not settings.coregister or len(scans) == 1:
        return affines, []
    fixed = _clipped(scans[0].img)
    records = []
    for index, scan in enumerate(scans[1:], start=1):
        transform = rigid_register(
            _clipped(scan.img), fixed, seed=settings.seed, transform_type=COREGISTRATION_TYPE
        )
        affines[index] = np.linalg.inv(transform.template_to_subject) @ scan.img.affine
        records.append(
            {
                'Input': scan.name,
                'To': scans[0].name,
                'RotationDegrees': round(transform.rotation_degrees(), 4),
                'TranslationMM': np.round(transform.template_to_subject[:3, 3], 4).tolist(),
            }
        )
    return affines, records


def _clipped(img: nb.Nifti1Image) -> nb.Nifti1Image:
    """Intensities clipped to their 0.05-99.95th percentiles (UniRes, for registration)."""
    data = img.get_fdata(dtype=np.float32)
    low, high = np.percentile(data, [0.05, 99.95])
    return nb.Nifti1Image(np.clip(data, low, high), img.affine)


def _output_grid(
    scans: list[InputScan], affines: list[np.ndarray], settings: SuperResSettings
) -> OutputGrid:
    if not settings.common_grid:
        return scan_grid(
            [(scan.img.shape[:3], affine) for scan, affine in zip(scans, affines, strict=True)],
            settings.voxel_size,
        )
    template = mni152_brain_template()
    # The template is a brain: the reference scan's brain is what has to land on it.
    transform: RigidTransform = rigid_register(
        _clipped(nb.Nifti1Image(scans[0].img.get_fdata(dtype=np.float32), affines[0])),
        template,
        seed=settings.seed,
        transform_type=COREGISTRATION_TYPE,
    )
    return common_grid(template, transform.template_to_subject, settings.voxel_size)


def _mean_trilinear(
    volumes: list[torch.Tensor], affines: list[np.ndarray], grid: OutputGrid
) -> torch.Tensor:
    """UniRes's initial guess: each repeat trilinearly resampled onto the grid (within its
    range), averaged where each one sees the voxel."""
    total = torch.zeros(grid.shape, device=volumes[0].device)
    count = torch.zeros_like(total)
    for volume, affine in zip(volumes, affines, strict=True):
        transform = np.linalg.inv(affine) @ grid.affine
        theta = grid_sample_theta(transform, tuple(volume.shape), grid.shape, volume.device)
        sample_grid = F.affine_grid(theta, [1, 1, *grid.shape], align_corners=True)
        stacked = torch.stack([volume, torch.ones_like(volume)])[None]
        resampled, inside = F.grid_sample(
            stacked, sample_grid, mode='bilinear', padding_mode='zeros', align_corners=True
        )[0]
        seen = inside > 0.5
        total += torch.where(seen, resampled.clamp(volume.min(), volume.max()), 0)
        count += seen
    return total / count.clamp(min=1)
