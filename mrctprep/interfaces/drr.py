"""Nipype interface over :func:`mrctprep.imaging.drr.simulate.simulate_drr`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    Bunch,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from PIL import Image

from mrctprep.core.devices import configure_torch_cpu
from mrctprep.imaging.drr.presets import resolve_drr_settings
from mrctprep.imaging.io import load_image
from mrctprep.interfaces.base import ImageInputSpec, TorchInputSpec, defined_or_none, load_nifti

if TYPE_CHECKING:
    from mrctprep.imaging.drr.simulate import DRRImage


class _RenderDRRInputSpec(ImageInputSpec, TorchInputSpec):
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

    In: a CT in HU (NIfTI). The NIfTI holds the image as (column, row) with row 0 at the top
    and the affine from pixel index to the pixel's world position on the detector.
    """

    input_spec = _RenderDRRInputSpec
    output_spec = _RenderDRROutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        # Deferred: its module imports torch, which costs seconds that building the workflow
        # should not pay.
        from mrctprep.imaging.drr.simulate import simulate_drr

        configure_torch_cpu(self.inputs.num_threads)
        settings = resolve_drr_settings(**self.inputs.options)
        ct = load_image(self.inputs.in_file)
        label_map_file = defined_or_none(self.inputs.label_map)
        label_map = (
            None if label_map_file is None else np.asanyarray(load_nifti(label_map_file).dataobj)
        )
        views = simulate_drr(
            ct,
            settings,
            device=self.inputs.device,
            seed=self.inputs.random_seed,
            label_map=label_map,
            label_materials=self.inputs.label_materials,
        )
        saved = [_save_view(view, settings.output, runtime.cwd) for view in views]
        self._results['out_files'] = [nifti for nifti, _, _ in saved]
        self._results['png_files'] = [png for _, png, _ in saved]
        self._results['metadata'] = [sidecar for _, _, sidecar in saved]
        self._results['labels'] = [view.label for view in views]
        return runtime


def _save_view(view: DRRImage, output: str, directory: str) -> tuple[str, str, dict[str, Any]]:
    """Write one view as NIfTI and PNG; return both paths and its sidecar fields."""
    from mrctprep.imaging.drr.simulate import to_png16  # deferred, as in RenderDRR

    nifti = os.path.join(directory, f'drr_{view.label}.nii')
    drr = nb.Nifti1Image(view.image.T.astype(np.float32), view.geometry.detector_affine())
    drr.header.set_xyzt_units('mm')
    drr.to_filename(nifti)
    png = os.path.join(directory, f'drr_{view.label}.png')
    pixels, scale = to_png16(view.image, output)
    Image.fromarray(pixels).save(png)
    return nifti, png, {**view.metadata, 'PNGScale': scale}
