"""Nipype interface over :func:`mrctprep.imaging.drr.simulate.simulate_drr`."""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from PIL import Image

from mrctprep.imaging.drr.presets import resolve_drr_settings
from mrctprep.imaging.io import load_image
from mrctprep.interfaces.base import TorchInputSpec


class _RenderDRRInputSpec(TorchInputSpec):
    in_file = File(exists=True, mandatory=True, desc='CT in HU (NIfTI)')
    options = traits.Dict(
        traits.Str,
        traits.Any,
        usedefault=True,
        desc='keyword arguments of resolve_drr_settings: preset, angles, grid, kvp, output, ...',
    )
    label_map = File(exists=True, desc='label map on the CT grid that sets materials')
    label_materials = traits.Dict(
        traits.Int,
        traits.Enum('air', 'soft tissue', 'bone'),
        usedefault=True,
        desc='label value -> material; unlisted labels keep the HU thresholds',
    )
    random_seed = traits.Int(0, usedefault=True, desc='seed of the Poisson noise')


class _RenderDRROutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc='one float32 NIfTI per view')
    png_files = traits.List(File(exists=True), desc='one 16-bit PNG per view')
    metadata = traits.List(traits.Dict, desc='one sidecar dict per view')
    labels = traits.List(traits.Str, desc='view labels (desc- entities)')


class RenderDRR(SimpleInterface):
    """DRRs of a CT on a digital C-arm: a NIfTI (detector affine), a PNG and a sidecar per view.

    The NIfTI holds the image as (column, row) with row 0 at the top and the affine from
    pixel index to the pixel's world position on the detector.
    """

    input_spec = _RenderDRRInputSpec
    output_spec = _RenderDRROutputSpec

    def _run_interface(self, runtime):
        # Deferred: importing torch costs seconds that building the workflow should not pay.
        import torch

        from mrctprep.imaging.drr.simulate import simulate_drr, to_png16

        torch.set_num_threads(self.inputs.num_threads)
        settings = resolve_drr_settings(**self.inputs.options)
        ct = load_image(self.inputs.in_file)
        label_map = None
        if isdefined(self.inputs.label_map):
            label_map = np.asanyarray(nb.load(self.inputs.label_map).dataobj)
        views = simulate_drr(
            ct,
            settings,
            device=self.inputs.device,
            seed=self.inputs.random_seed,
            label_map=label_map,
            label_materials=self.inputs.label_materials,
        )
        outputs = {'out_files': [], 'png_files': [], 'metadata': [], 'labels': []}
        for view in views:
            nifti = os.path.join(runtime.cwd, f'drr_{view.label}.nii')
            drr = nb.Nifti1Image(view.image.T.astype(np.float32), view.geometry.detector_affine())
            drr.header.set_xyzt_units('mm')
            drr.to_filename(nifti)
            png = os.path.join(runtime.cwd, f'drr_{view.label}.png')
            pixels, scale = to_png16(view.image, settings.output)
            Image.fromarray(pixels).save(png)
            outputs['out_files'].append(nifti)
            outputs['png_files'].append(png)
            outputs['metadata'].append({**view.metadata, 'PNGScale': scale})
            outputs['labels'].append(view.label)
        self._results.update(outputs)
        return runtime
