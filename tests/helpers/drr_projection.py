"""Where world points land on a DRR: the check of a view's projection matrix."""

from __future__ import annotations

import numpy as np


def project_points(projection_matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(column, row) image positions of world points (..., 3)."""
    points = np.asarray(points, dtype=np.float64)
    homogeneous = np.concatenate([points, np.ones((*points.shape[:-1], 1))], axis=-1)
    projected = homogeneous @ projection_matrix.T
    return projected[..., :2] / projected[..., 2:]
