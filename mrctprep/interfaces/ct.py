"""Nipype interface over :func:`mrctprep.imaging.hounsfield.conform_ct`."""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from mrctprep.imaging.hounsfield import conform_ct
from mrctprep.imaging.io import load_image
from mrctprep.interfaces.base import save_image


class _ConformCTInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='a CT volume (NIfTI)')
    padding_value = traits.Float(desc='HU outside the reconstruction circle, when declared')


class _ConformCTOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='the CT as int16 HU, RAS+, padding set to -1024')
    metadata = traits.Dict(desc='what was checked and changed, for the sidecar')


class ConformCT(SimpleInterface):
    """Check a CT is in HU (fixing an HU + 1024 offset), set padding to air, int16, RAS+."""

    input_spec = _ConformCTInputSpec
    output_spec = _ConformCTOutputSpec

    def _run_interface(self, runtime):
        declared = self.inputs.padding_value if isdefined(self.inputs.padding_value) else None
        conformed, metadata = conform_ct(
            load_image(self.inputs.in_file), name=self.inputs.in_file, declared_padding=declared
        )
        self._results['out_file'] = save_image(conformed, runtime, 'conformed.nii.gz')
        self._results['metadata'] = metadata
        return runtime
