"""Rigid (6 DOF) registration to an MNI152 brain template with ANTs, and resampling.

Transforms follow ITK/ANTs conventions: the ``from-T1w_to-MNI`` transform maps points of the
template (in LPS mm) to points of the subject, which is what resampling the subject into
template space needs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from mrctprep.imaging.intensity import CropBox, uncrop
from mrctprep.imaging.io import load_mni152_template

#: FSL's MNI152 1 mm grid (LAS, 182 x 218 x 182), on which the IGUANe model was trained.
FSL_MNI152_SHAPE = (182, 218, 182)
FSL_MNI152_AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
REGISTRATION_TYPE = 'QuickRigid'


@dataclass(frozen=True)
class RigidTransform:
    """A rigid transform as a 4x4 matrix in RAS mm mapping template points to subject points."""

    template_to_subject: np.ndarray

    @classmethod
    def from_itk(cls, path: str | Path) -> RigidTransform:
        transform = sitk.AffineTransform(sitk.ReadTransform(str(path)))
        matrix = np.eye(4)
        matrix[:3, :3] = np.reshape(transform.GetMatrix(), (3, 3))
        centre = np.array(transform.GetCenter())
        matrix[:3, 3] = np.array(transform.GetTranslation()) + centre - matrix[:3, :3] @ centre
        return cls(_LPS @ matrix @ _LPS)

    def inverse(self) -> RigidTransform:
        return RigidTransform(np.linalg.inv(self.template_to_subject))

    def to_itk(self, path: str | Path) -> Path:
        """ITK text transform (``AffineTransform_double_3_3``), LPS, as ANTs reads it."""
        lps = _LPS @ self.template_to_subject @ _LPS
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(lps[:3, :3].ravel().tolist())
        transform.SetTranslation(lps[:3, 3].tolist())
        sitk.WriteTransform(transform, str(path))
        return Path(path)

    def rotation_degrees(self) -> float:
        """The rotation angle of the transform (axis-angle), in degrees."""
        cosine = (np.trace(self.template_to_subject[:3, :3]) - 1) / 2
        return float(np.degrees(np.arccos(np.clip(cosine, -1, 1))))


def mni152_brain_template() -> nb.Nifti1Image:
    """The 1 mm ICBM 2009a symmetric T1 brain that nilearn ships (no download)."""
    return load_mni152_template('t1')


def fsl_mni152_grid() -> nb.Nifti1Image:
    """An empty image on FSL's MNI152 1 mm grid (world box x -91..90, y -126..91, z -72..109)."""
    return nb.Nifti1Image(np.zeros(FSL_MNI152_SHAPE, np.float32), FSL_MNI152_AFFINE)


def rigid_register(
    moving_brain: nb.Nifti1Image,
    template: nb.Nifti1Image,
    *,
    seed: int = 0,
    transform_type: str = REGISTRATION_TYPE,
) -> RigidTransform:
    """Rigid registration of a skull-stripped brain to a brain template (ANTs QuickRigid).

    ANTs' random metric sampling is seeded, so a run is repeatable. ``transform_type``
    ``'Rigid'`` runs ANTs' full multi-resolution schedule: slower, and about ten times more
    precise (0.1 degree rather than 1 between thick-slice scans of one head).
    """
    import ants

    ants.config.set_ants_deterministic(True, seed_value=seed)
    workdir = tempfile.mkdtemp(prefix='mrctprep-ants-')
    try:
        result = ants.registration(
            fixed=_to_ants(template),
            moving=_to_ants(moving_brain),
            type_of_transform=transform_type,
            outprefix=os.path.join(workdir, 'rigid_'),
        )
        return RigidTransform.from_itk(result['fwdtransforms'][0])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def resample_to_grid(
    img: nb.Nifti1Image,
    grid: nb.Nifti1Image,
    transform: RigidTransform,
    *,
    interpolation: str = 'linear',
) -> nb.Nifti1Image:
    """``img`` (subject space) resampled onto ``grid`` (template space) through ``transform``.

    ``interpolation``: ``linear``, ``bspline`` or ``nearest``; outside the image is 0.
    """
    order = {'nearest': 0, 'linear': 1, 'bspline': 3}[interpolation]
    # grid voxel -> template world -> subject world -> subject voxel
    grid_to_source = np.linalg.inv(img.affine) @ transform.template_to_subject @ grid.affine
    data = img.get_fdata(dtype=np.float32)
    resampled = ndimage.affine_transform(
        data, grid_to_source, output_shape=grid.shape[:3], order=order, mode='constant', cval=0
    )
    if order == 3:
        # bspline overshoots at edges; intensities stay within the source range
        resampled = np.clip(resampled, data.min(), data.max())
    out = nb.Nifti1Image(resampled.astype(np.float32), grid.affine)
    out.set_qform(grid.affine, code=4)
    out.set_sform(grid.affine, code=4)
    return out


def cropped_mni_to_native(
    img: nb.Nifti1Image,
    box: CropBox,
    transform: RigidTransform,
    native: nb.Nifti1Image,
    *,
    interpolation: str = 'linear',
) -> nb.Nifti1Image:
    """A model-space image (cropped FSL MNI grid) brought back onto the subject's ``native``
    grid: the crop undone, then resampled through the inverse of the rigid ``transform``."""
    full = uncrop(img, box, fsl_mni152_grid())
    out = resample_to_grid(full, native, transform.inverse(), interpolation=interpolation)
    out.set_qform(native.affine, code=int(native.header['qform_code']) or 1)
    out.set_sform(native.affine, code=int(native.header['sform_code']) or 1)
    return out


def flirt_matrix(
    transform: RigidTransform, subject: nb.Nifti1Image, reference: nb.Nifti1Image
) -> np.ndarray:
    """The same transform as an FSL FLIRT matrix (subject -> reference), via fslpy."""
    from fsl.data.image import Image
    from fsl.transform.flirt import toFlirt

    subject_to_template = transform.inverse().template_to_subject
    return toFlirt(subject_to_template, Image(subject), Image(reference), 'world', 'world')


def _to_ants(img: nb.Nifti1Image):
    import ants

    float_img = nb.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine)
    float_img.header.set_xyzt_units('mm', 'sec')
    return ants.from_nibabel_nifti(float_img)
