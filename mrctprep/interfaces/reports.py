"""Nipype interfaces that draw QC figures (reportlets)."""

from __future__ import annotations

import os

import nibabel as nb
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from mrctprep.imaging.figures import plot_orthogonal_slices


class _OrthogonalSlicesInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='an RAS+ image')
    title = traits.Str(mandatory=True, desc='figure title')
    window = traits.Tuple(
        traits.Float, traits.Float, desc='(level, width) display window; default percentiles'
    )


class _OrthogonalSlicesOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc='the SVG figure')


class OrthogonalSlicesRPT(SimpleInterface):
    """Sagittal, coronal and axial planes of an image, as an SVG figure."""

    input_spec = _OrthogonalSlicesInputSpec
    output_spec = _OrthogonalSlicesOutputSpec

    def _run_interface(self, runtime):
        out_report = os.path.join(runtime.cwd, 'orthogonal_slices.svg')
        window = self.inputs.window if self.inputs.window else None
        plot_orthogonal_slices(
            nb.load(self.inputs.in_file), out_report, title=self.inputs.title, window=window
        )
        self._results['out_report'] = out_report
        return runtime
