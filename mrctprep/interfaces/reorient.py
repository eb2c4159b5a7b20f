"""Nipype interface over :func:`mrctprep.imaging.orientation.reorient_to_ras`."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from mrctprep.imaging.io import load_image
from mrctprep.imaging.orientation import reorient_to_ras


class _ReorientInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='a 3D NIfTI image')


class _ReorientOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='the image with RAS+ voxel axes')
    metadata = traits.Dict(desc='what was done: original orientation, shape, voxel mapping')


class Reorient(SimpleInterface):
    """Reorder and flip voxel axes to RAS+ without resampling."""

    input_spec = _ReorientInputSpec
    output_spec = _ReorientOutputSpec

    def _run_interface(self, runtime):
        reoriented, record = reorient_to_ras(load_image(self.inputs.in_file))
        out_file = os.path.join(runtime.cwd, 'reoriented.nii.gz')
        reoriented.to_filename(out_file)
        self._results['out_file'] = out_file
        self._results['metadata'] = record.to_metadata()
        return runtime
