"""Nipype interface over :func:`mrctprep.imaging.orientation.reorient_to_ras`."""

from __future__ import annotations

import logging
from typing import Any

import nibabel as nb

from mrctprep.imaging.io import load_anatomical
from mrctprep.imaging.orientation import reorient_to_ras
from mrctprep.interfaces.base import ImageInputSpec, ImageInterface

LOGGER = logging.getLogger(__name__)


class Reorient(ImageInterface):
    """Check an anatomical image and reorder and flip its voxel axes to RAS+ (no resampling).

    In: a 3D NIfTI image. Out: the image with RAS+ voxel axes, and what was done (original
    orientation, shape, voxel mapping) for the sidecar.
    """

    input_spec = ImageInputSpec
    _out_name = 'reoriented.nii'

    def _compute(self) -> tuple[nb.Nifti1Image, dict[str, Any]]:
        img, warnings = load_anatomical(self.inputs.in_file)
        for warning in warnings:
            LOGGER.warning(warning)
        reoriented, record = reorient_to_ras(img)
        return reoriented, record.to_metadata() | ({'InputWarnings': warnings} if warnings else {})
