"""Nipype interfaces of the MR harmonization model (IGUANe) and of mapping its output back."""

from __future__ import annotations

import os

import nibabel as nb
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from mrctprep.core.devices import set_torch_threads
from mrctprep.imaging.intensity import CropBox
from mrctprep.imaging.registration import RigidTransform, cropped_mni_to_native
from mrctprep.interfaces.base import TorchInputSpec, save_image
from mrctprep.models.iguane import harmonize_volume, load_generator


class _HarmonizeInputSpec(TorchInputSpec):
    in_file = File(exists=True, mandatory=True, desc="mr-preproc's desc-norm T1w (model input)")
    weights_file = File(exists=True, mandatory=True, desc='verified IGUANe generator weights')
    weights_sha256 = traits.Str(mandatory=True, desc='SHA-256 from the weights card')
    tile = traits.Tuple(
        traits.Int,
        traits.Int,
        traits.Int,
        desc='the crop size the weights were trained on: run in such crops (else whole volume)',
    )


class _HarmonizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='harmonized image on the input grid (median-500 scale)')
    metadata = traits.Dict(desc='model, weights and device')


class Harmonize(SimpleInterface):
    """IGUANe's universal generator on one preprocessed T1w."""

    input_spec = _HarmonizeInputSpec
    output_spec = _HarmonizeOutputSpec

    def _run_interface(self, runtime):
        set_torch_threads(self.inputs.num_threads)
        generator = load_generator(
            self.inputs.weights_file, self.inputs.weights_sha256, self.inputs.device
        )
        img = nb.load(self.inputs.in_file)
        tile = self.inputs.tile if isdefined(self.inputs.tile) else None
        inference = (
            'whole volume'
            if tile is None
            else (
                f'crops of {"x".join(map(str, tile))} voxels as in training, overlapping by half, '
                'Gaussian-blended'
            )
        )
        harmonized = harmonize_volume(
            img.get_fdata(dtype='float32'), generator, self.inputs.device, tile=tile
        )
        out = nb.Nifti1Image(harmonized, img.affine, img.header)
        out.set_data_dtype('float32')
        self._results['out_file'] = save_image(out, runtime, 'harmonized.nii')
        self._results['metadata'] = {
            'HarmonizationModel': 'IGUANe (Roca et al., 2025), universal generator',
            'ModelWeights': os.path.basename(self.inputs.weights_file),
            'ModelWeightsSHA256': self.inputs.weights_sha256,
            'Device': self.inputs.device,
            'Inference': inference,
        }
        return runtime


class _ToNativeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='image on the cropped MNI model grid')
    crop_metadata = traits.Dict(mandatory=True, desc="the model input's sidecar (CropBox)")
    transform = File(exists=True, mandatory=True, desc='from-T1w_to-template ITK transform')
    reference_file = File(exists=True, mandatory=True, desc='native-space T1w (target grid)')
    mask_file = File(exists=True, mandatory=True, desc='native-space brain mask')


class _ToNativeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='the image on the native grid, zero outside the brain')


class CroppedMNIToNative(SimpleInterface):
    """Undo the IGUANe crop and the rigid registration: model output -> subject's grid."""

    input_spec = _ToNativeInputSpec
    output_spec = _ToNativeOutputSpec

    def _run_interface(self, runtime):
        box = self.inputs.crop_metadata['CropBox']
        native = cropped_mni_to_native(
            nb.load(self.inputs.in_file),
            CropBox(tuple(box['start']), tuple(box['size'])),
            RigidTransform.from_itk(self.inputs.transform),
            nb.load(self.inputs.reference_file),
        )
        brain = nb.load(self.inputs.mask_file).get_fdata() > 0
        data = native.get_fdata(dtype='float32') * brain
        out = nb.Nifti1Image(data, native.affine, native.header)
        out.set_data_dtype('float32')
        self._results['out_file'] = save_image(out, runtime, 'native.nii')
        return runtime
