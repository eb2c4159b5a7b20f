"""The forward model of one scan (UniRes's projection A) and its exact adjoint.

A scan ``x`` of the unknown high-resolution image ``y`` is modelled as ``x = A y``: ``y`` is
sampled on an intermediate grid ("yx": the scan's axes, ``r`` samples per scan voxel, ``r`` the
ceiling of the scan-to-output voxel ratio), convolved with the slice profile and taken every
``r`` samples. The profile is rectangular through the thick axis (the scan's largest voxel
size; width ``(1 - gap) r``), Gaussian in-plane (FWHM ``r``) and a Dirac along axes with
``r = 1``; its taps integrate the profile against a linear B-spline, so they sum to one.

When the scan's axes run along the output grid's (any order or direction, any shift: the
common case), every step acts on one axis at a time and A is the product of three small
matrices, one per axis: ``A y`` costs three matrix products with no general resampling. Only a
scan that is rotated with respect to the output grid is sampled trilinearly through
``grid_sample``, whose gradient is the exact adjoint (splatting).

Where the profile of a scan's outer slice reaches past the output grid, the image is taken to
continue as its edge value (UniRes takes 0 there): a field of view that ends in tissue, as a
crop or a partial-coverage clinical scan does, is then not modelled as ending in air.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.integrate import trapezoid

from mrctprep.imaging.axes import three

#: A scan counts as aligned with the output grid when treating it as aligned moves none of its
#: voxels by more than this many output voxels, at the edge of the field of view (the centre
#: is exact). Co-registration of scans of one head leaves rotations of about 0.1 degree (0.2
#: voxels at 10 cm), which should not cost the separable operator its speed.
ALIGNMENT_TOLERANCE = 0.5
#: Samples per unit length when integrating the Gaussian profile against the B-spline.
_INTEGRATION_SAMPLES = 1001


def profile_taps(kind: str, fwhm: float) -> np.ndarray:
    """Taps of a slice profile at integer offsets ``-h..h`` (output voxels), summing to one.

    ``kind``: ``'dirac'``, ``'gaussian'`` (support ``±floor(4 sigma + 1)``) or ``'rect'``
    (support ``±floor((fwhm + 2) / 2)``). Each tap is the profile integrated against the
    linear B-spline centred on its offset.

    >>> profile_taps('rect', 3.0).round(4).tolist()
    [0.0417, 0.2917, 0.3333, 0.2917, 0.0417]
    """
    if kind == 'dirac' or fwhm <= 0:
        return np.ones(1)
    if kind == 'rect':
        half = int((fwhm + 2) // 2)
        offsets = np.arange(-half, half + 1, dtype=float)
        # The B-spline's integral from -1 to t, at the rectangle's two edges.
        upper = _hat_integral(np.clip(fwhm / 2 - offsets, -1, 1))
        lower = _hat_integral(np.clip(-fwhm / 2 - offsets, -1, 1))
        taps = upper - lower
    elif kind == 'gaussian':
        sigma = fwhm / math.sqrt(8 * math.log(2))
        half = int(4 * sigma + 1)
        offsets = np.arange(-half, half + 1, dtype=float)
        s = np.linspace(-1, 1, _INTEGRATION_SAMPLES)
        hat = 1 - np.abs(s)
        gauss = np.exp(-((offsets[:, None] + s[None, :]) ** 2) / (2 * sigma**2))
        # scipy's: numpy < 2 has no trapezoid, numpy >= 2 deprecates trapz.
        taps = trapezoid(gauss * hat, s, axis=1)
    else:
        raise ValueError(f'unknown slice profile {kind!r}')
    return taps / taps.sum()


def _hat_integral(t: np.ndarray) -> np.ndarray:
    return np.where(t < 0, (t + 1) ** 2 / 2, 1 - (1 - t) ** 2 / 2)


@dataclass(frozen=True)
class ScanGeometry:
    """What the model needs of a scan: its grid, and the slice gap on its thick axis."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    slice_gap: float = 0.0

    @property
    def voxel_size(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def thick_axis(self) -> int:
        """The axis of the largest voxel size; ties go to the last axis, the usual slice axis."""
        sizes = self.voxel_size
        return int(2 - np.argmax(np.isclose(sizes, sizes.max(), rtol=1e-3)[::-1]))


@dataclass(frozen=True)
class Profile:
    """Per scan axis: samples per scan voxel, and the slice-profile taps."""

    ratios: tuple[int, int, int]
    taps: tuple[np.ndarray, np.ndarray, np.ndarray]
    kinds: tuple[str, str, str]

    @property
    def halves(self) -> tuple[int, int, int]:
        return three((len(t) - 1) // 2 for t in self.taps)


def slice_profile(scan: ScanGeometry, output_affine: np.ndarray) -> Profile:
    """UniRes's profile of a scan seen from the output grid (see the module's docstring)."""
    relative = np.linalg.inv(output_affine[:3, :3]) @ scan.affine[:3, :3]
    sizes = np.linalg.norm(relative, axis=0)
    # A 5.0000001 ratio from rounding in the affines is 5, not 6.
    ratios = three(max(1, math.ceil(size - 1e-3)) for size in sizes)
    thick = scan.thick_axis
    kinds, taps = [], []
    for axis, ratio in enumerate(ratios):
        if ratio == 1:
            kind, fwhm = 'dirac', 0.0
        elif axis == thick:
            kind, fwhm = 'rect', (1 - scan.slice_gap) * ratio
        else:
            kind, fwhm = 'gaussian', float(ratio)
        kinds.append(kind)
        taps.append(profile_taps(kind, fwhm))
    return Profile(ratios, three(taps), three(kinds))


def mode_product(volume: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """``matrix`` applied along ``axis`` of a 3D tensor, without copying the tensor around."""
    n0, n1, n2 = volume.shape
    if axis == 0:
        return (matrix @ volume.reshape(n0, -1)).reshape(-1, n1, n2)
    if axis == 1:
        return torch.matmul(matrix, volume)
    return (volume.reshape(-1, n2) @ matrix.T).reshape(n0, n1, -1)


class AxisOperator:
    """A linear map along one axis: a dense matrix, or a plain selection of consecutive rows.

    A selection (an axis where the scan samples the output grid's own voxels) costs a view
    forward, a zero padding backward and a mask in the Gram operator.
    """

    def __init__(self, matrix: np.ndarray, device: torch.device | str):
        self.n_out, self.n_in = matrix.shape
        nonzero = matrix != 0
        unit_rows = nonzero.sum(axis=1) == 1
        starts = nonzero.argmax(axis=1)
        self.start = int(starts[0])
        self.is_selection = bool(
            unit_rows.all()
            and np.allclose(matrix[np.arange(self.n_out), starts], 1)
            and np.array_equal(starts, self.start + np.arange(self.n_out))
        )
        self.is_identity = self.is_selection and self.n_out == self.n_in
        self.matrix = torch.as_tensor(matrix, dtype=torch.float32, device=device)
        self.transpose = self.matrix.T.contiguous()
        if self.is_selection:
            mask = torch.zeros(self.n_in, dtype=torch.float32, device=device)
            mask[self.start : self.start + self.n_out] = 1
            self.mask = mask
        else:
            gram = matrix.T @ matrix
            self.gram_matrix = torch.as_tensor(gram, dtype=torch.float32, device=device)

    def forward(self, volume: torch.Tensor, axis: int) -> torch.Tensor:
        if self.is_selection:
            return volume.narrow(axis, self.start, self.n_out)
        return mode_product(volume, self.matrix, axis)

    def adjoint(self, volume: torch.Tensor, axis: int) -> torch.Tensor:
        if self.is_selection:
            padding = [0, 0] * (2 - axis) + [self.start, self.n_in - self.start - self.n_out]
            return F.pad(volume, padding)
        return mode_product(volume, self.transpose, axis)

    def gram(self, volume: torch.Tensor, axis: int) -> torch.Tensor:
        if self.is_selection:
            shape = [1, 1, 1]
            shape[axis] = self.n_in
            return volume * self.mask.view(shape)
        # Through the scan's (smaller) grid when that is cheaper than the n x n Gram matrix.
        if 2 * self.n_out < self.n_in:
            return mode_product(mode_product(volume, self.matrix, axis), self.transpose, axis)
        return mode_product(volume, self.gram_matrix, axis)


def _strided_convolution(taps: np.ndarray, ratio: int, n_out: int) -> np.ndarray:
    """The (n_out, (n_out - 1) * ratio + len(taps)) matrix of a valid, strided convolution."""
    n_in = (n_out - 1) * ratio + len(taps)
    matrix = np.zeros((n_out, n_in))
    for row in range(n_out):
        matrix[row, row * ratio : row * ratio + len(taps)] = taps
    return matrix


def _linear_interpolation(positions: np.ndarray, n_in: int, reach: float) -> np.ndarray:
    """Rows sampling a 1D signal of ``n_in`` samples at ``positions``.

    Positions up to ``reach`` samples beyond either end take the end's value; farther ones 0.
    """
    matrix = np.zeros((len(positions), n_in))
    snapped = np.round(positions)
    # Positions within a millionth of a voxel of a sample are that sample (no 0-weight taps).
    positions = np.where(np.abs(positions - snapped) < 1e-6, snapped, positions)
    inside = (positions >= -reach) & (positions <= n_in - 1 + reach)
    positions = np.clip(positions, 0, n_in - 1)
    for row in np.flatnonzero(inside):
        low = int(np.floor(positions[row]))
        fraction = positions[row] - low
        matrix[row, low] = 1 - fraction
        if fraction > 0:
            matrix[row, low + 1] = fraction
    return matrix


class Projection:
    """``A`` of one scan onto the output grid: ``forward``, exact ``adjoint`` and ``gram``."""

    def __init__(
        self,
        scan: ScanGeometry,
        output_shape: tuple[int, int, int],
        output_affine: np.ndarray,
        *,
        device: torch.device | str = 'cpu',
    ):
        self.scan = scan
        self.output_shape = tuple(int(n) for n in output_shape)
        self.profile = slice_profile(scan, output_affine)
        ratios, halves = np.array(self.profile.ratios), np.array(self.profile.halves)
        self.intermediate_shape = tuple(
            int(n) for n in (np.array(scan.shape) - 1) * ratios + 1 + 2 * halves
        )
        # Intermediate voxel j lies at scan voxel (j - half) / ratio.
        to_scan = np.diag([*(1 / ratios), 1.0])
        to_scan[:3, 3] = -halves / ratios
        #: Intermediate voxel -> output voxel.
        self.transform = np.linalg.inv(output_affine) @ scan.affine @ to_scan
        self.device = torch.device(device)
        #: How far (output voxels) beyond the grid's edge samples take the edge's value: as
        #: far as the slice profile of a scan voxel centred inside the grid reaches.
        self.reach = float(max(halves)) + 1
        convolutions = [
            _strided_convolution(taps, ratio, n)
            for taps, ratio, n in zip(
                self.profile.taps, self.profile.ratios, scan.shape, strict=True
            )
        ]
        self.permutation = _axis_permutation(self.transform, self.intermediate_shape)
        if self.permutation is not None:
            matrices = [
                convolution @ self._interpolation(axis, self.permutation[axis])
                for axis, convolution in enumerate(convolutions)
            ]
        else:
            matrices = convolutions
            self.theta = grid_sample_theta(
                self.transform, self.output_shape, self.intermediate_shape, self.device
            )
        self.axes = [AxisOperator(matrix, self.device) for matrix in matrices]
        #: The interleaved-slice correction ``s`` (see :meth:`set_interleave_scale`).
        self.interleave_scale = 0.0
        self._thick_matrix = matrices[scan.thick_axis]

    @property
    def is_separable(self) -> bool:
        """True when no general resampling is needed (the scan is aligned with the grid)."""
        return self.permutation is not None

    def interleave_signs(self) -> torch.Tensor:
        """+1 on slices 0, 2, 4... of the scan's thick axis, -1 on the others, shaped to
        broadcast over the scan's grid."""
        thick = self.scan.thick_axis
        signs = 1 - 2 * (torch.arange(self.scan.shape[thick], device=self.device) % 2)
        shape = [1, 1, 1]
        shape[thick] = -1
        return signs.float().view(shape)

    def set_interleave_scale(self, scale: float) -> None:
        """UniRes's interleaved-slice correction: ``A`` becomes ``D(s) A``, with ``D`` = e^s on
        slices 0, 2, 4... of the thick axis and e^-s on the others.

        ``D`` is diagonal along one scan axis, so it scales the rows of that axis's matrix:
        forward, adjoint and Gram operator keep their separable form.
        """
        self.interleave_scale = scale
        factors = np.exp(scale * self.interleave_signs().flatten().cpu().numpy())
        thick = self.scan.thick_axis
        self.axes[thick] = AxisOperator(factors[:, None] * self._thick_matrix, self.device)

    def _interpolation(self, axis: int, target: int) -> np.ndarray:
        """Linear interpolation of output axis ``target`` at the intermediate samples of scan
        axis ``axis``, taken through the centre of the intermediate grid."""
        centre = (np.array(self.intermediate_shape) - 1) / 2
        row = self.transform[target]
        steps = np.arange(self.intermediate_shape[axis])
        offset = row[3] + sum(row[q] * centre[q] for q in range(3) if q != axis)
        return _linear_interpolation(
            row[axis] * steps + offset, self.output_shape[target], self.reach
        )

    def _order(self) -> list[int]:
        """Scan axes in the order that shrinks the volume fastest."""
        return sorted(range(3), key=lambda a: self.axes[a].n_out / self.axes[a].n_in)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``A y``: output-grid volume -> the scan's grid."""
        if self.permutation is not None:
            for axis in self._order():
                volume = self.axes[axis].forward(volume, self.permutation[axis])
            return volume.permute(*self.permutation)
        grid, within_reach = self._sample_grid()
        volume = (
            F.grid_sample(
                volume[None, None],
                grid,
                mode='bilinear',
                padding_mode='border',
                align_corners=True,
            )[0, 0]
            * within_reach
        )
        for axis in self._order():
            volume = self.axes[axis].forward(volume, axis)
        return volume

    def adjoint(self, volume: torch.Tensor) -> torch.Tensor:
        """``A^T x``: scan-grid volume -> the output grid (the exact transpose of forward)."""
        if self.permutation is not None:
            volume = volume.permute(*np.argsort(self.permutation).tolist())
            for axis in reversed(self._order()):
                volume = self.axes[axis].adjoint(volume, self.permutation[axis])
            return volume.contiguous()
        for axis in reversed(self._order()):
            volume = self.axes[axis].adjoint(volume, axis)
        grid, within_reach = self._sample_grid()
        empty = torch.zeros((), device=volume.device).expand(1, 1, *self.output_shape)
        # grid_sample's gradient with respect to its input: splatting, the exact adjoint.
        # Modes: 0 = bilinear interpolation, 1 = border padding.
        pushed, _ = torch.ops.aten.grid_sampler_3d_backward(
            (volume * within_reach)[None, None], empty, grid, 0, 1, True, [True, False]
        )
        return pushed[0, 0]

    def _sample_grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the intermediate samples fall in the output grid (grid_sample's normalised
        coordinates), and which fall within :attr:`reach` of it."""
        grid = F.affine_grid(self.theta, [1, 1, *self.intermediate_shape], align_corners=True)
        # Normalised coordinates run (W, H, D): output axes reversed.
        sizes = torch.tensor(self.output_shape[::-1], dtype=grid.dtype, device=grid.device)
        limit = 1 + 2 * self.reach / (sizes - 1).clamp(min=1)
        within_reach = (grid.abs() <= limit).all(dim=-1)[0]
        return grid, within_reach

    def gram(self, volume: torch.Tensor) -> torch.Tensor:
        """``A^T A y``; axis by axis (no trip through the scan's grid) when separable."""
        if self.permutation is None:
            return self.adjoint(self.forward(volume))
        for axis, operator in enumerate(self.axes):
            if not operator.is_identity:
                volume = operator.gram(volume, self.permutation[axis])
        return volume

    def field_of_view(self) -> torch.Tensor:
        """Output voxels that the scan sees (``A^T 1 > 0``)."""
        ones = torch.ones(self.scan.shape, dtype=torch.float32, device=self.device)
        return self.adjoint(ones) > 1e-6


def _axis_permutation(transform: np.ndarray, shape: tuple[int, ...]) -> list[int] | None:
    """For each intermediate axis, the output axis it runs along; None when rotated.

    Rotated means that ignoring the off-axis part of ``transform`` would move a voxel at the
    edge of the intermediate grid by more than :data:`ALIGNMENT_TOLERANCE` output voxels.
    """
    linear = np.abs(transform[:3, :3])
    permutation = [int(np.argmax(linear[:, axis])) for axis in range(3)]
    if sorted(permutation) != [0, 1, 2]:
        return None
    off_axis = linear.copy()
    off_axis[permutation, range(3)] = 0
    half_extent = (np.array(shape) - 1) / 2
    if (off_axis @ half_extent).max() > ALIGNMENT_TOLERANCE:
        return None
    return permutation


def grid_sample_theta(
    transform: np.ndarray,
    volume_shape: tuple[int, ...],
    sample_shape: tuple[int, ...],
    device: torch.device,
) -> torch.Tensor:
    """``affine_grid``'s theta for sampling a volume at the voxels of another grid.

    ``transform`` maps sample-grid voxels to volume voxels; theta maps the same in
    ``grid_sample``'s normalised coordinates.
    """

    def to_normalised(shape):
        # grid_sample orders coordinates (W, H, D), i.e. voxel axes reversed.
        matrix = np.zeros((4, 4))
        for axis, n in enumerate(shape):
            matrix[2 - axis, axis] = 2 / max(n - 1, 1)
            matrix[2 - axis, 3] = -1
        matrix[3, 3] = 1
        return matrix

    theta = to_normalised(volume_shape) @ transform @ np.linalg.inv(to_normalised(sample_shape))
    return torch.as_tensor(theta[None, :3], dtype=torch.float32, device=device)
