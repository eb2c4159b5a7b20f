"""Nipype interface over :func:`mrctprep.imaging.orientation.reorient_to_ras`."""

from __future__ import annotations

import logging

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from mrctprep.imaging.io import load_anatomical
from mrctprep.imaging.orientation import reorient_to_ras
from mrctprep.interfaces.base import save_image

LOGGER = logging.getLogger('mrctprep')


class _ReorientInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='a 3D NIfTI image')


class _ReorientOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='the image with RAS+ voxel axes')
    metadata = traits.Dict(desc='what was done: original orientation, shape, voxel mapping')


class Reorient(SimpleInterface):
    """Check an anatomical image and reorder and flip its voxel axes to RAS+ (no resampling)."""

    input_spec = _ReorientInputSpec
    output_spec = _ReorientOutputSpec

    def _run_interface(self, runtime):
        img, warnings = load_anatomical(self.inputs.in_file)
        for warning in warnings:
            LOGGER.warning(warning)
        reoriented, record = reorient_to_ras(img)
        self._results['out_file'] = save_image(reoriented, runtime, 'reoriented.nii')
        self._results['metadata'] = record.to_metadata() | (
            {'InputWarnings': warnings} if warnings else {}
        )
        return runtime
