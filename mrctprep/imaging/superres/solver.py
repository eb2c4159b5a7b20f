"""MAP super-resolution under joint total variation, by ADMM (UniRes's ``fit``).

The objective over channels ``c`` (contrasts) and their scans ``n`` (repeats) is

    sum_cn tau_cn / 2 ||x_cn - A_cn y_c||^2 + sum_voxels sqrt(sum_cd (lambda_c D_d y_c)^2)

with ``D_d`` forward differences divided by the voxel size. The image is taken to continue
beyond the grid as its edge (no difference across the edge), where UniRes takes it to be 0:
an image whose field of view cuts through tissue is not pulled towards 0 at its edges. ADMM splits
``z = lambda D y``: each iteration solves the quadratic y-update of every channel by conjugate
gradients (warm-started), then shrinks ``z`` jointly over channels and directions, then updates
the scaled multiplier ``w``. The regularisation follows UniRes's coarse-to-fine schedule, and
the run stops by its rules (see :class:`SolverSettings`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mrctprep.imaging.superres.noise import NoiseEstimate
from mrctprep.imaging.superres.operators import Projection


@dataclass(frozen=True)
class SolverSettings:
    """UniRes's defaults (``unires/struct.py``)."""

    max_iter: int = 512
    #: Stop at the last schedule stage when |gain| stays below this for ``patience`` iterations.
    tolerance: float = 1e-4
    cg_max_iter: int = 20
    cg_tolerance: float = 1e-3
    reg_scale: float = 4.0
    #: Stages above ``reg_scale`` in the coarse-to-fine schedule (powers of two) for several scans.
    schedule_stages: int = 3
    rho_scale: float = 1.0
    #: A stage ends after at least this many iterations and ``patience`` small gains.
    stage_min_iter: int = 17
    stage_tolerance: float = 1e-3
    patience: int = 6
    #: The last stage stops only after more than this many iterations.
    last_stage_min_iter: int = 20
    #: UniRes's ``--scale``: fit the interleaved-slice correction ``s`` of every MR scan.
    interleaved: bool = False
    #: Trial steps (each half the last) of the line search on ``s``.
    interleave_line_search: int = 6


@dataclass
class Scan:
    """One observed scan: its voxels (on the device), forward model and noise estimate."""

    data: torch.Tensor
    projection: Projection
    noise: NoiseEstimate
    modality: str

    @property
    def contrast(self) -> float:
        # UniRes divides CT's contrast by 4 in super-resolution: a four times stronger prior.
        return self.noise.mu / 4 if self.modality == 'ct' else self.noise.mu


@dataclass
class SolverResult:
    images: list[torch.Tensor]
    iterations: int
    converged: bool
    lambdas: list[float]
    rho: float
    schedule: list[float]
    objective: list[float] = field(default_factory=list)
    cg_iterations: list[int] = field(default_factory=list)
    #: Per channel, per scan: the fitted interleaved-slice correction; None where not fitted.
    interleave_scales: list[list[float | None]] = field(default_factory=list)


def regularisation_schedule(n_scans: int, settings: SolverSettings) -> list[float]:
    """``[32, 16, 8, 4]`` (for ``reg_scale`` 4) with several scans, ``[4]`` with one."""
    if n_scans == 1:
        return [settings.reg_scale]
    above = 2 ** math.ceil(math.log2(settings.reg_scale) + 1e-9)
    stages = [above * 2**k for k in reversed(range(settings.schedule_stages))]
    return [*stages, settings.reg_scale]


def fit(
    channels: list[list[Scan]],
    initial: list[torch.Tensor],
    voxel_size: tuple[float, float, float],
    settings: SolverSettings = SolverSettings(),
    *,
    progress: Callable[[str], None] | None = None,
) -> SolverResult:
    """Run ADMM from ``initial`` (one volume per channel; updated in place)."""
    all_scans = [scan for scans in channels for scan in scans]
    stages = _Stages(regularisation_schedule(len(all_scans), settings), settings)
    weights = torch.tensor([1 / v**2 for v in voxel_size])
    # No scan thicker than the output voxels is UniRes's denoising mode: no slices to correct.
    denoising = all(max(scan.projection.profile.ratios) == 1 for scan in all_scans)

    def corrected(scan: Scan) -> bool:
        return settings.interleaved and not denoising and scan.modality != 'ct'

    y = initial
    z = [torch.zeros((3, *image.shape), device=image.device) for image in y]
    w = [torch.zeros_like(zc) for zc in z]
    objective: list[float] = []
    cg_counts: list[int] = []
    converged, iteration = False, 0
    lambdas, rho = _penalties(stages.scale, channels, settings)
    for iteration in range(1, settings.max_iter + 1):
        cg_counts += _update_images(channels, y, z, w, lambdas, rho, voxel_size, weights, settings)
        value = _shrink(y, z, w, lambdas, rho, voxel_size) + sum(
            _data_term(scan, y[c]) for c, scans in enumerate(channels) for scan in scans
        )
        objective.append(value)
        for c, scans in enumerate(channels):
            for scan in filter(corrected, scans):
                _update_interleave_scale(scan, y[c], settings.interleave_line_search)
        gain = stages.record(value)
        if progress:
            progress(
                f'iteration {iteration}: stage {stages.stage + 1}/{len(stages.schedule)}, '
                f'objective {value:.6g}, gain {gain if gain is not None else float("nan"):.2e}, '
                f'CG {cg_counts[-1]}'
            )
        if stages.converged():
            converged = True
            break
        if stages.advance(iteration):
            lambdas, rho = _penalties(stages.scale, channels, settings)
    scales = [
        [scan.projection.interleave_scale if corrected(scan) else None for scan in scans]
        for scans in channels
    ]
    return SolverResult(
        y, iteration, converged, lambdas, rho, stages.schedule, objective, cg_counts, scales
    )


@dataclass
class _Stages:
    """Where a run is in the coarse-to-fine schedule, and UniRes's rules to move on or stop."""

    schedule: list[float]
    settings: SolverSettings
    stage: int = 0
    #: Iterations in this stage, and how many of the last ones gained little.
    stage_iter: int = 0
    small_gains: int = 0
    #: The objective over this stage.
    history: list[float] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return self.schedule[self.stage]

    @property
    def last(self) -> bool:
        return self.stage == len(self.schedule) - 1

    @property
    def min_iter(self) -> int:
        # With an iteration cap too small for the schedule, every stage gets an equal share,
        # so that the last (target) regularisation is always reached.
        cap_share = max(1, self.settings.max_iter // (len(self.schedule) + 1))
        return min(self.settings.stage_min_iter, cap_share)

    def record(self, value: float) -> float | None:
        """Count an iteration that reached objective ``value``; returns its gain."""
        self.history.append(value)
        self.stage_iter += 1
        gain = _gain(self.history)
        threshold = self.settings.tolerance if self.last else self.settings.stage_tolerance
        self.small_gains = (
            self.small_gains + 1 if gain is not None and abs(gain) < threshold else 0
        )
        return gain

    def converged(self) -> bool:
        return (
            self.last
            and self.stage_iter > self.settings.last_stage_min_iter
            and self.small_gains >= self.settings.patience
        )

    def advance(self, iteration: int) -> bool:
        """Move to the next stage when this one is done (or the cap nears); True if it moved."""
        if self.last or self.stage_iter < self.min_iter:
            return False
        stages_left = len(self.schedule) - 1 - self.stage
        cap_near = self.settings.max_iter - iteration <= self.min_iter * stages_left
        if self.small_gains < self.settings.patience and not cap_near:
            return False
        self.stage, self.stage_iter, self.small_gains, self.history = self.stage + 1, 0, 0, []
        return True


def _penalties(
    scale: float, channels: list[list[Scan]], settings: SolverSettings
) -> tuple[list[float], float]:
    """Each channel's regularisation weight lambda at ``scale``, and ADMM's penalty rho."""
    all_scans = [scan for scans in channels for scan in scans]
    n_channels = len(channels)
    contrasts = [sum(scan.contrast for scan in scans) / len(scans) for scans in channels]
    lambdas = [scale * math.sqrt(1 / n_channels) / contrast for contrast in contrasts]
    if any(scan.modality == 'ct' for scan in all_scans):
        return lambdas, 1.0
    mean_tau = sum(scan.noise.precision for scan in all_scans) / len(all_scans)
    return lambdas, settings.rho_scale * math.sqrt(mean_tau) / (sum(lambdas) / n_channels)


def _update_images(
    channels: list[list[Scan]],
    y: list[torch.Tensor],
    z: list[torch.Tensor],
    w: list[torch.Tensor],
    lambdas: list[float],
    rho: float,
    voxel_size: tuple[float, float, float],
    weights: torch.Tensor,
    settings: SolverSettings,
) -> list[int]:
    """ADMM's y-update: each channel's quadratic solved in place by conjugate gradients, warm
    started; returns each solve's iterations."""
    counts = []
    for c, scans in enumerate(channels):
        lam = lambdas[c]
        rhs = lam * divergence(rho * z[c] - w[c], voxel_size)
        for scan in scans:
            rhs.add_(scan.projection.adjoint(scan.data), alpha=scan.noise.precision)
        hessian = _hessian(scans, rho * lam**2, weights)
        counts.append(
            conjugate_gradient(hessian, rhs, y[c], settings.cg_max_iter, settings.cg_tolerance)
        )
    return counts


def _update_interleave_scale(scan: Scan, image: torch.Tensor, trials: int) -> None:
    """One Gauss-Newton step on the scan's interleaved-slice correction ``s``, image fixed.

    With ``p = D(s) A y`` and ``d`` = +-1 per slice, ``dp/ds = d p``: over the scan's
    non-zero voxels the data term ``|p - x|^2 / 2`` has gradient ``sum d p (p - x)`` and
    Gauss-Newton Hessian ``sum p^2``. The first of ``trials`` halving steps that lowers the
    data term is taken; none, and ``s`` stays. (The noise precision scales all of it alike.)
    """
    projection = scan.projection
    # Masked to x != 0; x itself is 0 off the mask.
    predicted = projection.forward(image) * (scan.data != 0)
    signs = projection.interleave_signs()
    residual = predicted - scan.data
    curvature = float(torch.vdot(predicted.ravel(), predicted.ravel()))
    if curvature == 0:
        return
    step = -float((signs * predicted * residual).sum()) / curvature
    current = float(torch.vdot(residual.ravel(), residual.ravel()))
    for _ in range(trials):
        trial = predicted * torch.exp(signs * step) - scan.data
        if float(torch.vdot(trial.ravel(), trial.ravel())) < current:
            projection.set_interleave_scale(projection.interleave_scale + step)
            return
        step /= 2


def _gain(history: list[float]) -> float | None:
    """UniRes's gain: the last decrease over the range of the stage's objective values."""
    if len(history) < 2:
        return None
    spread = max(history) - min(history)
    return (history[-2] - history[-1]) / spread if spread > 0 else 0.0


def _hessian(scans: list[Scan], prior_weight: float, weights: torch.Tensor):
    def apply(volume: torch.Tensor) -> torch.Tensor:
        out = laplacian(volume, weights) * prior_weight
        for scan in scans:
            out.add_(scan.projection.gram(volume), alpha=scan.noise.precision)
        return out

    return apply


def _data_term(scan: Scan, image: torch.Tensor) -> float:
    """tau / 2 ||x - A y||^2 over the scan's non-zero voxels (as UniRes logs it)."""
    residual = scan.projection.forward(image) - scan.data
    residual = residual * (scan.data != 0)
    return 0.5 * scan.noise.precision * float(torch.vdot(residual.ravel(), residual.ravel()))


def _shrink(y, z, w, lambdas, rho, voxel_size) -> float:
    """The z- and w-updates, joint over channels and directions; returns the JTV of y.

    With ``u = w / rho + lambda D y``, ``z = max(|u| - 1/rho, 0) / |u| u`` and
    ``w + rho (lambda D y - z) = rho (u - z)``: z's storage holds u on the way.
    """
    tv_squared = torch.zeros_like(y[0])
    u_squared = torch.zeros_like(y[0])
    for c, image in enumerate(y):
        scaled_gradient = gradient(image, voxel_size).mul_(lambdas[c])
        tv_squared.add_(scaled_gradient.square().sum(0))
        torch.add(scaled_gradient, w[c], alpha=1 / rho, out=z[c])
        u_squared.add_(z[c].square().sum(0))
    u_norm = u_squared.sqrt_()
    factor = (u_norm - 1 / rho).clamp_(min=0).div_(u_norm.add_(1e-7))
    for zc, wc in zip(z, w, strict=True):
        torch.mul(zc, (1 - factor).mul_(rho), out=wc)
        zc.mul_(factor)
    return float(tv_squared.sqrt_().sum())


def gradient(volume: torch.Tensor, voxel_size) -> torch.Tensor:
    """Forward differences along each axis over the voxel size, 0 at the far edge: (3, ...)."""
    out = torch.zeros((3, *volume.shape), dtype=volume.dtype, device=volume.device)
    for axis in range(3):
        n = volume.shape[axis]
        ahead, behind = volume.narrow(axis, 1, n - 1), volume.narrow(axis, 0, n - 1)
        torch.sub(ahead, behind, out=out[axis].narrow(axis, 0, n - 1))
        out[axis].div_(voxel_size[axis])
    return out


def divergence(field: torch.Tensor, voxel_size) -> torch.Tensor:
    """The adjoint of :func:`gradient` (minus the divergence)."""
    out = torch.zeros(field.shape[1:], dtype=field.dtype, device=field.device)
    for axis in range(3):
        n, scale = out.shape[axis], 1 / voxel_size[axis]
        differences = field[axis].narrow(axis, 0, n - 1)
        out.narrow(axis, 0, n - 1).sub_(differences, alpha=scale)
        out.narrow(axis, 1, n - 1).add_(differences, alpha=scale)
    return out


def laplacian(volume: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``divergence(gradient(volume))`` in one sweep; ``weights`` = 1 / voxel_size^2."""
    out = volume * (2 * float(weights.sum()))
    for axis in range(3):
        n, weight = volume.shape[axis], float(weights[axis])
        out.narrow(axis, 1, n - 1).sub_(volume.narrow(axis, 0, n - 1), alpha=weight)
        out.narrow(axis, 0, n - 1).sub_(volume.narrow(axis, 1, n - 1), alpha=weight)
        # Edge voxels have one neighbour, hence one difference, along the axis.
        out.narrow(axis, 0, 1).sub_(volume.narrow(axis, 0, 1), alpha=weight)
        out.narrow(axis, n - 1, 1).sub_(volume.narrow(axis, n - 1, 1), alpha=weight)
    return out


def conjugate_gradient(
    apply: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    solution: torch.Tensor,
    max_iter: int,
    tolerance: float,
) -> int:
    """Solve ``apply(s) = rhs`` in place from ``solution``; returns the iterations run.

    Each step lowers the quadratic ``s'Hs/2 - rhs's`` by ``step * |r|^2 / 2``; CG stops when
    a step gains less than ``tolerance`` of what the solve has gained so far.
    """
    residual = rhs - apply(solution)
    direction = residual.clone()
    rr = float(torch.vdot(residual.ravel(), residual.ravel()))
    gained = 0.0
    for iteration in range(max_iter):
        if rr == 0:
            return iteration
        product = apply(direction)
        curvature = float(torch.vdot(direction.ravel(), product.ravel()))
        if curvature <= 0:
            return iteration
        step = rr / curvature
        solution.add_(direction, alpha=step)
        gain = step * rr / 2
        gained += gain
        if gain < tolerance * gained:
            return iteration + 1
        residual.sub_(product, alpha=step)
        rr_new = float(torch.vdot(residual.ravel(), residual.ravel()))
        direction.mul_(rr_new / rr).add_(residual)
        rr = rr_new
    return max_iter
