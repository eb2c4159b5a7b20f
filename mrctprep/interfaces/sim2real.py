"""Nipype interface of the sim2real CycleGAN generator over the DRR views of one CT."""

from __future__ import annotations

import os
from typing import Any

import nibabel as nb
import numpy as np
from nipype.interfaces.base import Bunch, File, SimpleInterface, TraitedSpec, traits
from PIL import Image

from mrctprep.core.devices import configure_torch_cpu
from mrctprep.imaging.figures import plot_contact_sheet
from mrctprep.interfaces.base import TorchInputSpec, load_nifti
from mrctprep.interfaces.reports import ReportletInputSpec, ReportletInterface


class _Sim2RealInputSpec(TorchInputSpec):
    in_files = traits.List(File(exists=True), mandatory=True, desc='DRR views (NIfTI)')
    labels = traits.List(traits.Str, mandatory=True, desc='the views, one per file')
    weights_file = File(exists=True, mandatory=True, desc='verified sim2real generator weights')
    weights_sha256 = traits.Str(mandatory=True, desc='SHA-256 from the weights card')


class _Sim2RealOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc='one float32 NIfTI in [0, 1] per view')
    png_files = traits.List(File(exists=True), desc='one 16-bit PNG per view')
    metadata = traits.List(traits.Dict, desc='one sidecar dict per view')


class Sim2Real(SimpleInterface):
    """Each DRR view through the CycleGAN generator G_A: the view with a real radiograph's look.

    In: the drr pipeline's NIfTI views ((column, row), detector affine). Out: per view a
    float32 NIfTI in [0, 1] on the same detector grid, a 16-bit PNG (x 65535) and the
    sidecar fields (model, weights' SHA-256, device).
    """

    input_spec = _Sim2RealInputSpec
    output_spec = _Sim2RealOutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        # Deferred: its module imports torch, which costs seconds that building the workflow
        # should not pay.
        from mrctprep.models.cyclegan import load_generator, translate

        configure_torch_cpu(self.inputs.num_threads)
        generator = load_generator(
            self.inputs.weights_file, self.inputs.weights_sha256, self.inputs.device
        )
        metadata = {
            'Sim2RealModel': 'CycleGAN generator G_A (pytorch-CycleGAN-and-pix2pix resnet)',
            'ModelWeights': os.path.basename(self.inputs.weights_file),
            'ModelWeightsSHA256': self.inputs.weights_sha256,
            'Device': self.inputs.device,
            'Intensity': '(tanh + 1) / 2 in [0, 1]; PNG x 65535',
        }
        out_files, png_files = [], []
        for path, label in zip(self.inputs.in_files, self.inputs.labels, strict=True):
            drr = load_nifti(path)
            image = np.squeeze(np.asanyarray(drr.dataobj, np.float32)).T
            mapped = translate(generator, image, device=self.inputs.device)
            out_files.append(_save(mapped, drr, runtime.cwd, label))
            png = os.path.join(runtime.cwd, f'sim2real_{label}.png')
            Image.fromarray(np.rint(mapped * 65535).astype(np.uint16)).save(png)
            png_files.append(png)
        self._results['out_files'] = out_files
        self._results['png_files'] = png_files
        self._results['metadata'] = [
            {**metadata, 'SourceView': label} for label in self.inputs.labels
        ]
        return runtime


def _save(mapped: np.ndarray[Any, Any], drr: nb.Nifti1Image, directory: str, label: str) -> str:
    path = os.path.join(directory, f'sim2real_{label}.nii')
    image = nb.Nifti1Image(mapped.T.astype(np.float32), drr.affine)
    image.header.set_xyzt_units('mm')
    image.to_filename(path)
    return path


class _SideBySideInputSpec(ReportletInputSpec):
    in_files = traits.List(File(exists=True), mandatory=True, desc='DRR views (NIfTI)')
    mapped_files = traits.List(File(exists=True), mandatory=True, desc='their sim2real images')
    labels = traits.List(traits.Str, mandatory=True, desc='the views, one per file')


class SideBySideRPT(ReportletInterface):
    """Each view's DRR and its sim2real image side by side, one view per row, as one PNG."""

    input_spec = _SideBySideInputSpec
    _report_name = 'drr_sim2real.png'

    def _plot(self, out_report: str) -> None:
        images, labels = [], []
        for drr, mapped, label in zip(
            self.inputs.in_files, self.inputs.mapped_files, self.inputs.labels, strict=True
        ):
            for path in (drr, mapped):
                images.append(np.asanyarray(load_nifti(path).dataobj, np.float32).T)
            labels += [f'{label} DRR', f'{label} sim2real']
        plot_contact_sheet(images, labels, out_report, title=self.inputs.title, columns=2)
