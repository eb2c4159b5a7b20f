"""Nipype interfaces of the MR harmonization model (IGUANe) and of mapping its output back."""

from __future__ import annotations

import os
from typing import Any

import nibabel as nb
from nipype.interfaces.base import File, traits

from mrctprep.core.devices import configure_torch_cpu
from mrctprep.imaging.intensity import CropBox
from mrctprep.imaging.registration import RigidTransform, cropped_mni_to_native
from mrctprep.interfaces.base import (
    ImageInputSpec,
    ImageInterface,
    ImageOutputSpec,
    TorchInputSpec,
    defined_or_none,
    image_like,
    load_nifti,
)
from mrctprep.models.iguane import harmonize_volume, load_generator


class _HarmonizeInputSpec(ImageInputSpec, TorchInputSpec):
    weights_file = File(exists=True, mandatory=True, desc='verified IGUANe generator weights')
    weights_sha256 = traits.Str(mandatory=True, desc='SHA-256 from the weights card')
    tile = traits.Tuple(
        traits.Int,
        traits.Int,
        traits.Int,
        desc='the crop size the weights were trained on: run in such crops (else whole volume)',
    )


class Harmonize(ImageInterface):
    """IGUANe's universal generator on one preprocessed T1w.

    In: mr-preproc's desc-norm T1w (the model input). Out: the harmonized image on the input
    grid (median-500 scale), and the model, weights and device for the sidecar.
    """

    input_spec = _HarmonizeInputSpec
    _out_name = 'harmonized.nii'

    def _compute(self) -> tuple[nb.Nifti1Image, dict[str, Any]]:
        configure_torch_cpu(self.inputs.num_threads)
        generator = load_generator(
            self.inputs.weights_file, self.inputs.weights_sha256, self.inputs.device
        )
        img = load_nifti(self.inputs.in_file)
        tile = defined_or_none(self.inputs.tile)
        harmonized = harmonize_volume(
            img.get_fdata(dtype='float32'), generator, self.inputs.device, tile=tile
        )
        return image_like(harmonized, img, 'float32'), {
            'HarmonizationModel': 'IGUANe (Roca et al., 2025), universal generator',
            'ModelWeights': os.path.basename(self.inputs.weights_file),
            'ModelWeightsSHA256': self.inputs.weights_sha256,
            'Device': self.inputs.device,
            'Inference': _inference(tile),
        }


def _inference(tile: tuple[int, int, int] | None) -> str:
    """How the generator was run, in words, for the sidecar."""
    if tile is None:
        return 'whole volume'
    return (
        f'crops of {"x".join(map(str, tile))} voxels as in training, overlapping by half, '
        'Gaussian-blended'
    )


class _ToNativeInputSpec(ImageInputSpec):
    crop_metadata = traits.Dict(mandatory=True, desc="the model input's sidecar (CropBox)")
    transform = File(exists=True, mandatory=True, desc='from-T1w_to-template ITK transform')
    reference_file = File(exists=True, mandatory=True, desc='native-space T1w (target grid)')
    mask_file = File(exists=True, mandatory=True, desc='native-space brain mask')


class CroppedMNIToNative(ImageInterface):
    """Undo the IGUANe crop and the rigid registration: model output -> subject's grid.

    In: an image on the cropped MNI model grid. Out: the image on the native grid, zero
    outside the brain.
    """

    input_spec = _ToNativeInputSpec
    output_spec = ImageOutputSpec
    _out_name = 'native.nii'

    def _compute(self) -> tuple[nb.Nifti1Image, None]:
        box = self.inputs.crop_metadata['CropBox']
        native = cropped_mni_to_native(
            load_nifti(self.inputs.in_file),
            CropBox(tuple(box['start']), tuple(box['size'])),
            RigidTransform.from_itk(self.inputs.transform),
            load_nifti(self.inputs.reference_file),
        )
        brain = load_nifti(self.inputs.mask_file).get_fdata() > 0
        return image_like(native.get_fdata(dtype='float32') * brain, native, 'float32'), None
