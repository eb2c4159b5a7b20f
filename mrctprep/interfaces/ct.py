"""Nipype interface over :func:`mrctprep.imaging.hounsfield.conform_ct`."""

from __future__ import annotations

from typing import Any

import nibabel as nb
from nipype.interfaces.base import traits

from mrctprep.imaging.hounsfield import conform_ct
from mrctprep.imaging.io import load_image
from mrctprep.interfaces.base import ImageInputSpec, ImageInterface, defined_or_none


class _ConformCTInputSpec(ImageInputSpec):
    padding_value = traits.Float(desc='HU outside the reconstruction circle, when declared')


class ConformCT(ImageInterface):
    """Check a CT is in HU (fixing an HU + 1024 offset), set padding to air, int16, RAS+.

    In: a CT volume (NIfTI). Out: the CT as int16 HU, RAS+, padding set to -1024, and what
    was checked and changed, for the sidecar.
    """

    input_spec = _ConformCTInputSpec
    _out_name = 'conformed.nii.gz'

    def _compute(self) -> tuple[nb.Nifti1Image, dict[str, Any]]:
        return conform_ct(
            load_image(self.inputs.in_file),
            name=self.inputs.in_file,
            declared_padding=defined_or_none(self.inputs.padding_value),
        )
