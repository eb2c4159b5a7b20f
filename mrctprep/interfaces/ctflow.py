"""Nipype interfaces of the ct-harmonize pipeline: CTFlow on a CT, and its QC figure."""

from __future__ import annotations

import os
from typing import Any

import nibabel as nb
import numpy as np
from nipype.interfaces.base import Bunch, File, SimpleInterface, isdefined, traits

from mrctprep.core.devices import configure_torch_cpu
from mrctprep.imaging.ct_harmonization import plot_harmonization
from mrctprep.interfaces.base import ImageMetadataOutputSpec, TorchInputSpec, load_nifti
from mrctprep.interfaces.reports import ReportletInputSpec, ReportletInterface


class _HarmonizeCTInputSpec(TorchInputSpec):
    in_file = File(exists=True, mandatory=True, desc='CT in HU (ct-ingest conformed)')
    weights = File(exists=True, mandatory=True, desc='verified CTFlow weights')
    sha256 = traits.Str(mandatory=True, desc='their SHA-256, from the card')
    size = traits.Dict(mandatory=True, desc="the network's sizes, from the card")
    tau = traits.Float(mandatory=True, desc='sampling temperature (0: the mean-like output)')
    samples = traits.Int(mandatory=True, desc='samples averaged; with > 1 their SD too')
    seed = traits.Int(mandatory=True, desc='seed of the latent samples')
    source_condition = traits.Str(desc="the input's reconstruction, as its sidecar says")
    reference_condition = traits.Str(desc='the reconstruction the weights map onto')
    source_acquisition = traits.Dict(desc="the input's kernel and dose facts, from its sidecar")


class _HarmonizeCTOutputSpec(ImageMetadataOutputSpec):
    std_file = File(desc='voxel-wise SD of the samples (HU, float32), with samples > 1')


class HarmonizeCT(SimpleInterface):
    """CTFlow on one CT, slice by slice. Out: the harmonized CT (int16 HU on the input's grid),
    with several samples their SD, and the sidecar fields."""

    input_spec = _HarmonizeCTInputSpec
    output_spec = _HarmonizeCTOutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        # Deferred: torch costs seconds that building the workflow should not pay.
        from mrctprep.models.ctflow_inference import harmonize_volume, load_ctflow

        configure_torch_cpu(self.inputs.num_threads)
        ct = load_nifti(self.inputs.in_file)
        model = load_ctflow(self.inputs.weights, self.inputs.size, self.inputs.device)
        result = harmonize_volume(
            model,
            np.asanyarray(ct.dataobj, dtype=np.float32),
            tau=self.inputs.tau,
            samples=self.inputs.samples,
            seed=self.inputs.seed,
            device=self.inputs.device,
        )
        self._results['out_file'] = _save(
            np.clip(np.rint(result.hu), -32768, 32767).astype(np.int16), ct, runtime, 'ct'
        )
        if result.std is not None:
            self._results['std_file'] = _save(result.std, ct, runtime, 'ctstd')
        self._results['metadata'] = self._sidecar()
        return runtime

    def _sidecar(self) -> dict[str, Any]:
        conditions = {
            'SourceCondition': self.inputs.source_condition,
            'ReferenceCondition': self.inputs.reference_condition,
            'SourceAcquisition': self.inputs.source_acquisition,
        }
        return {
            'Method': 'CTFlow (Wei et al., 2023): conditional normalizing flow, axial slices',
            **{key: value for key, value in conditions.items() if isdefined(value)},
            'Temperature': self.inputs.tau,
            'Samples': self.inputs.samples,
            'RandomSeed': self.inputs.seed,
            'ModelWeights': os.path.basename(self.inputs.weights),
            'ModelWeightsSHA256': self.inputs.sha256,
            'Device': self.inputs.device,
        }


def _save(data: np.ndarray, ct: nb.Nifti1Image, runtime: Bunch, name: str) -> str:
    out_file = os.path.join(runtime.cwd, f'harmonized_{name}.nii.gz')
    image = nb.Nifti1Image(data, ct.affine, ct.header)
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1, 0)
    image.to_filename(out_file)
    return out_file


class _HarmonizationInputSpec(ReportletInputSpec):
    in_file = File(exists=True, mandatory=True, desc='the CT given to CTFlow (HU)')
    harmonized_file = File(exists=True, mandatory=True, desc='its harmonized CT (HU)')
    std_file = File(desc='the SD of the samples (HU), where there were several')


class CTHarmonizationRPT(ReportletInterface):
    """Input | harmonized | difference | SD, in the soft-tissue and the lung window."""

    input_spec = _HarmonizationInputSpec
    _report_name = 'ct_harmonization.svg'

    def _plot(self, out_report: str) -> None:
        def volume(path: str) -> np.ndarray:
            return np.asanyarray(load_nifti(path).dataobj, dtype=np.float32)

        std = volume(self.inputs.std_file) if isdefined(self.inputs.std_file) else None
        plot_harmonization(
            volume(self.inputs.in_file),
            volume(self.inputs.harmonized_file),
            std,
            self.inputs.title,
            out_report,
        )
