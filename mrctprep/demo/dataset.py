"""A small synthetic BIDS dataset of MR and CT heads for trying out mrctprep.

Two anatomies (the MNI152 template wrapped in a head, and a smoothly deformed copy of it) are
each scanned at two sites, a travelling-subject design: each site has its own MR contrast,
bias field, noise, head pose, voxel order and CT scanner. The seed draws the acquisition noise
and bias fields; the anatomies are fixed, so datasets with different seeds are rescans of the
same cohort.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
from scipy import ndimage as ndi

from mrctprep import __version__
from mrctprep.imaging.dicom import LPS_FROM_RAS, write_ct_dicom_series
from mrctprep.imaging.synthetic_head import (
    HeadModel,
    T1Contrast,
    acquisition_grid,
    add_ct_noise,
    add_rician_noise,
    add_scalp_and_skull,
    apply_head_pose,
    bias_field,
    ct_hu_from_tissues,
    deform_head_model,
    head_mask,
    head_pose,
    load_mni152_tissues,
    smooth_deformation,
    t1w_from_tissues,
    to_int16_hu,
)

LOGGER = logging.getLogger(__name__)

# Noise dominates the images: gzip levels above 6 shrink them by ~1% but take several times longer.
_GZIP_LEVEL = 6
_FWHM_PER_SIGMA = 2 * np.sqrt(2 * np.log(2))


@dataclass(frozen=True)
class Pose:
    """Head position in the scanner: rotation about the brain's centre, then a shift."""

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]


@dataclass(frozen=True)
class T1wProtocol:
    """How a site acquires the T1-weighted image."""

    contrast: T1Contrast
    noise_sd: float  # Rician sigma, in stored units
    bias_strength: float  # the bias field spans 1 -/+ this
    orientation: str  # voxel axis order on disk, e.g. 'RAS'
    pose: Pose
    sidecar: dict[str, object]


@dataclass(frozen=True)
class CTProtocol:
    """How a site acquires the head CT."""

    manufacturer: str
    model: str
    kernel: str
    kvp: float
    tube_current_ma: float
    exposure_time_s: float
    ctdivol_mgy: float
    voxel_size: tuple[float, float, float]
    noise_sd_hu: float
    noise_grain_vox: float  # spatial correlation of the noise (the kernel's blur)
    pose: Pose


@dataclass(frozen=True)
class Site:
    name: str
    t1w: T1wProtocol
    ct: CTProtocol


@dataclass(frozen=True)
class Participant:
    label: str
    anatomy: str
    site: str
    age: int
    sex: str


# Intensity scales put the MR noise at 2 stored units (SNR 50 and 30 in white matter), fine
# enough to quantise without loss yet coarse enough for the noise to gzip well; thick CT slices
# keep the uncompressed DICOM copies small. Together they hold the dataset under 40 MB.
SITES = {
    'siteA': Site(
        name='siteA',
        t1w=T1wProtocol(
            # 3 T MPRAGE: wide grey/white contrast, high SNR, a strong bias field.
            contrast=T1Contrast(
                gamma=1.3,
                white_matter=100.0,
                fat=1.05,
                diploe=0.3,
                cortical_bone=0.03,
                muscle=0.45,
            ),
            noise_sd=2.0,
            bias_strength=0.18,
            orientation='RAS',
            pose=Pose(rotation_deg=(3.0, -2.0, 4.0), translation_mm=(2.0, -3.0, 4.0)),
            sidecar={
                'Manufacturer': 'Siemens',
                'ManufacturerModelName': 'Prisma',
                'MagneticFieldStrength': 3,
                'MRAcquisitionType': '3D',
                'RepetitionTime': 2.3,
                'EchoTime': 0.00229,
                'InversionTime': 0.9,
                'FlipAngle': 8,
            },
        ),
        ct=CTProtocol(
            manufacturer='Siemens',
            model='SOMATOM Definition AS',
            kernel='B30f',
            kvp=120,
            tube_current_ma=320,
            exposure_time_s=1.0,
            ctdivol_mgy=55.3,
            voxel_size=(1.0, 1.0, 5.0),
            noise_sd_hu=3.0,
            noise_grain_vox=0.8,
            pose=Pose(rotation_deg=(-8.0, 1.0, -2.0), translation_mm=(-1.0, 4.0, -5.0)),
        ),
    ),
    'siteB': Site(
        name='siteB',
        t1w=T1wProtocol(
            # 1.5 T IR-SPGR: flatter contrast, lower SNR, milder bias; stored sagittally.
            contrast=T1Contrast(
                gamma=0.8,
                white_matter=60.0,
                fat=0.95,
                diploe=0.25,
                cortical_bone=0.05,
                muscle=0.5,
            ),
            noise_sd=2.0,
            bias_strength=0.1,
            orientation='ASL',
            pose=Pose(rotation_deg=(-4.0, 3.0, -3.0), translation_mm=(-3.0, 5.0, -2.0)),
            sidecar={
                'Manufacturer': 'GE',
                'ManufacturerModelName': 'Signa HDxt',
                'MagneticFieldStrength': 1.5,
                'MRAcquisitionType': '3D',
                'RepetitionTime': 0.0087,
                'EchoTime': 0.0038,
                'InversionTime': 0.6,
                'FlipAngle': 8,
            },
        ),
        ct=CTProtocol(
            manufacturer='GE',
            model='LightSpeed VCT',
            kernel='STANDARD',
            kvp=100,
            tube_current_ma=250,
            exposure_time_s=1.0,
            ctdivol_mgy=38.5,
            voxel_size=(1.5, 1.5, 3.0),
            noise_sd_hu=5.0,
            noise_grain_vox=0.6,
            pose=Pose(rotation_deg=(-5.0, -2.0, 3.0), translation_mm=(2.0, -2.0, 3.0)),
        ),
    ),
}

#: The default cohort's two travellers; further ones get a seeded age and sex.
_TRAVELLERS = {'A': (34, 'F'), 'B': (41, 'M')}
MAX_PARTICIPANTS_PER_SITE = 26  # travellers are named A to Z
_EXTRA_ORIENTATIONS = ('LPS', 'PIR', 'RAS', 'ASL')


def demo_participants(per_site: int = 2, sites: int = 2) -> tuple[Participant, ...]:
    """Every traveller (anatomy ``A``, ``B``, ...) scanned at every site, numbered in that
    order: the default is sub-01 (A at siteA), sub-02 (A at siteB), sub-03 and sub-04 (B)."""
    if not (1 <= per_site <= MAX_PARTICIPANTS_PER_SITE and 1 <= sites <= 26):
        raise ValueError(
            f'the demo has 1 to {MAX_PARTICIPANTS_PER_SITE} participants per site at 1 to 26 '
            f'sites, not {per_site} per site at {sites} site(s)'
        )
    anatomies = [chr(ord('A') + k) for k in range(per_site)]
    site_names = [f'site{chr(ord("A") + k)}' for k in range(sites)]
    width = max(2, len(str(per_site * sites)))
    participants: list[Participant] = []
    for anatomy in anatomies:
        age, sex = _TRAVELLERS.get(anatomy) or _drawn_age_and_sex(anatomy)
        for site in site_names:
            label = f'{len(participants) + 1:0{width}d}'
            participants.append(Participant(label, anatomy, site, age, sex))
    return tuple(participants)


def _drawn_age_and_sex(anatomy: str) -> tuple[int, str]:
    rng = np.random.default_rng(zlib.crc32(f'traveller-{anatomy}'.encode()))
    return int(rng.integers(20, 80)), str(rng.choice(['F', 'M']))


def site_protocols(name: str) -> Site:
    """siteA and siteB as defined above; a further site lies between the two in contrast,
    noise and bias (drawn from its name), with its own pose and voxel order."""
    if name in SITES:
        return SITES[name]
    index = ord(name.removeprefix('site')) - ord('A')
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    mix = float(rng.uniform(0.2, 0.8))
    first, second = SITES['siteA'].t1w, SITES['siteB'].t1w
    contrast = T1Contrast(
        **{
            f.name: (1 - mix) * getattr(first.contrast, f.name)
            + mix * getattr(second.contrast, f.name)
            for f in fields(T1Contrast)
        }
    )
    pose = Pose(
        rotation_deg=tuple(rng.uniform(-5, 5, 3).round(1).tolist()),
        translation_mm=tuple(rng.uniform(-5, 5, 3).round(1).tolist()),
    )
    t1w = T1wProtocol(
        contrast=contrast,
        noise_sd=2.0,
        bias_strength=round(float(rng.uniform(0.08, 0.2)), 2),
        orientation=_EXTRA_ORIENTATIONS[(index - len(SITES)) % len(_EXTRA_ORIENTATIONS)],
        pose=pose,
        sidecar={**first.sidecar, 'Manufacturer': 'Philips', 'ManufacturerModelName': 'Ingenia'},
    )
    ct = SITES['siteA' if index % 2 == 0 else 'siteB'].ct
    return Site(name=name, t1w=t1w, ct=ct)


PARTICIPANTS = demo_participants()


def anatomy_description(name: str) -> str:
    """What participants.json says of a traveller's anatomy.

    >>> anatomy_description('C')
    'anatomy A smoothly deformed (up to 2.5 mm along each axis), with its own skull'
    """
    if name == 'A':
        return 'the MNI152 template brain in a synthetic head'
    return 'anatomy A smoothly deformed (up to 2.5 mm along each axis), with its own skull'


_README = """\
mrctprep demo
=============

A synthetic travelling-subject dataset written by `mrctprep demo` (mrctprep {version},
seed {seed}). Each anatomy is scanned at every site (a travelling subject):

{participants}
Each participant has a T1-weighted MR image (`anat/*_T1w.nii.gz`) and a head CT in Hounsfield
units (`anat/*_ct.nii.gz`). CT is not part of the BIDS specification yet, so `.bidsignore` hides
it from the validator. The same CT is also under `sourcedata/sub-*/` as a DICOM series and as a
NRRD file, as a scanner or another tool would deliver it.

The sites differ as real ones do: MR contrast, intensity scale, bias field, noise level, head
pose, voxel order on disk (siteA stores RAS, siteB sagittal ASL), and CT scanner, kernel, dose
and voxel size. Sidecar times are in seconds; CT tube current in mA, dose (CTDIvol) in mGy.

Origin of the anatomy
---------------------
The brain of anatomy A is the MNI ICBM152 nonlinear symmetric 2009a template (1 mm), as
bundled with nilearn: Fonov et al., NeuroImage 47 (2009) S102
(doi:10.1016/S1053-8119(09)70884-5); Fonov et al., NeuroImage 54 (2011) 313-327
(doi:10.1016/j.neuroimage.2010.07.033). Skull, scalp, neck, CSF rim, contrast, noise and pose
are synthetic. The CC0 license of this dataset covers what the generator adds;
the template itself remains under the terms of its authors (McConnell Brain Imaging Centre,
see http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009).
"""

_SITE_LEVELS = {
    'siteA': 'Siemens Prisma 3 T MPRAGE; Siemens SOMATOM Definition AS CT, B30f kernel',
    'siteB': 'GE Signa HDxt 1.5 T IR-SPGR; GE LightSpeed VCT CT, STANDARD kernel',
}

_PARTICIPANTS_JSON: dict[str, dict[str, object]] = {
    'participant_id': {'Description': 'Participant label'},
    'site': {
        'Description': 'Scanning site (MR and CT scanners and protocols)',
    },
    'traveller': {
        'Description': 'The person (head) scanned: the same traveller at several sites is one '
        'travelling subject',
    },
    'age': {'Description': 'Age of the (synthetic) participant', 'Units': 'year'},
    'sex': {
        'Description': 'Sex of the (synthetic) participant',
        'Levels': {'F': 'female', 'M': 'male'},
    },
}


def build_anatomy(name: str, template: HeadModel) -> HeadModel:
    """Head model of anatomy ``'A'`` (the template) or of another letter (a deformed copy,
    its deformation and skull drawn from its name)."""
    rng = np.random.default_rng(zlib.crc32(f'anatomy-{name}'.encode()))
    if name != 'A':
        displacement = smooth_deformation(template.shape, template.voxel_size, 2.5, rng)
        template = deform_head_model(template, displacement)
    return add_scalp_and_skull(template, rng)


def acquisition_rng(seed: int, label: str, modality: str) -> np.random.Generator:
    """Random stream of one acquisition, independent of the order images are written in."""
    return np.random.default_rng([seed, zlib.crc32(f'sub-{label}/{modality}'.encode())])


def _pose_matrix(pose: Pose, anatomy: HeadModel) -> np.ndarray:
    centre = nib.affines.apply_affine(anatomy.affine, ndi.center_of_mass(anatomy.maps['brain']))
    return head_pose(pose.rotation_deg, pose.translation_mm, centre)


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code='scanner')
    img.set_sform(affine, code='scanner')
    img.header.set_xyzt_units('mm')
    return img


def acquire_t1w(
    anatomy: HeadModel, protocol: T1wProtocol, rng: np.random.Generator
) -> nib.Nifti1Image:
    """T1-weighted image (int16) of ``anatomy`` as the site's protocol records it."""
    pose = _pose_matrix(protocol.pose, anatomy)
    shape, affine = acquisition_grid(
        head_mask(anatomy),
        anatomy.affine,
        pose,
        voxel_size=(1.0, 1.0, 1.0),
        orientation=protocol.orientation,
    )
    signal = apply_head_pose(
        t1w_from_tissues(anatomy, protocol.contrast), anatomy.affine, pose, shape, affine
    )
    # The coil's sensitivity and the noise belong to the scanner's grid, not to the anatomy.
    signal *= bias_field(shape, nib.affines.voxel_sizes(affine), protocol.bias_strength, rng)
    image = add_rician_noise(signal, protocol.noise_sd, rng)
    return _nifti(np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16), affine)


def acquire_ct(
    anatomy: HeadModel, protocol: CTProtocol, rng: np.random.Generator
) -> nib.Nifti1Image:
    """Head CT (int16 HU) of ``anatomy``, axial slices stored in DICOM's LPS voxel order."""
    pose = _pose_matrix(protocol.pose, anatomy)
    shape, affine = acquisition_grid(
        head_mask(anatomy),
        anatomy.affine,
        pose,
        voxel_size=protocol.voxel_size,
        orientation='LPS',
    )
    # A CT voxel averages over its extent (the slice profile above all), so blur to it first.
    blur = np.asarray(protocol.voxel_size) / (_FWHM_PER_SIGMA * anatomy.voxel_size)
    hu = ndi.gaussian_filter(ct_hu_from_tissues(anatomy), blur)
    hu = apply_head_pose(hu, anatomy.affine, pose, shape, affine)
    hu = add_ct_noise(hu, protocol.noise_sd_hu, protocol.noise_grain_vox, rng)
    return _nifti(to_int16_hu(hu), affine)


def _ct_dicom_meta(protocol: CTProtocol, img: nib.Nifti1Image) -> dict[str, object]:
    in_plane_mm = np.asarray(img.shape[:2]) * img.header.get_zooms()[:2]
    return {
        'Manufacturer': protocol.manufacturer,
        'ManufacturerModelName': protocol.model,
        'ConvolutionKernel': protocol.kernel,
        'KVP': protocol.kvp,
        'XRayTubeCurrent': protocol.tube_current_ma,
        'ExposureTime': protocol.exposure_time_s * 1000,  # DICOM counts milliseconds
        'Exposure': protocol.tube_current_ma * protocol.exposure_time_s,
        'CTDIvol': protocol.ctdivol_mgy,
        'ReconstructionDiameter': round(float(in_plane_mm.max()), 1),
    }


def _ct_sidecar(protocol: CTProtocol, img: nib.Nifti1Image) -> dict[str, object]:
    meta = _ct_dicom_meta(protocol, img)
    return {
        'Modality': 'CT',
        **meta,
        'ExposureTime': protocol.exposure_time_s,  # BIDS counts seconds
        'SliceThickness': float(img.header.get_zooms()[2]),
        'Units': 'HU',
    }


def _write_json(path: Path, content: object) -> None:
    path.write_text(json.dumps(content, indent=2) + '\n')


def _write_nifti_gz(img: nib.Nifti1Image, path: Path) -> None:
    # No timestamp in the gzip header, so equal images give equal files.
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0))


def _write_nrrd(img: nib.Nifti1Image, path: Path) -> None:
    lps_affine = LPS_FROM_RAS @ img.affine
    header = {
        'space': 'left-posterior-superior',
        # One row per voxel axis: that axis's step in LPS millimetres.
        'space directions': lps_affine[:3, :3].T,
        'space origin': lps_affine[:3, 3],
        'kinds': ['domain'] * 3,
        'encoding': 'gzip',
    }
    buffer = io.BytesIO()
    nrrd.write(buffer, np.asanyarray(img.dataobj), header, compression_level=_GZIP_LEVEL)
    # pynrrd stamps the time of writing into a comment; without it equal images give equal files.
    path.write_bytes(re.sub(rb'^# on [^\n]*\n', b'', buffer.getvalue(), count=1, flags=re.M))


def _write_participant(
    root: Path, participant: Participant, anatomy: HeadModel, seed: int
) -> None:
    site = site_protocols(participant.site)
    subject = f'sub-{participant.label}'
    anat = root / subject / 'anat'
    anat.mkdir(parents=True)

    t1w = acquire_t1w(anatomy, site.t1w, acquisition_rng(seed, participant.label, 'T1w'))
    _write_nifti_gz(t1w, anat / f'{subject}_T1w.nii.gz')
    _write_json(anat / f'{subject}_T1w.json', site.t1w.sidecar)

    ct = acquire_ct(anatomy, site.ct, acquisition_rng(seed, participant.label, 'ct'))
    _write_nifti_gz(ct, anat / f'{subject}_ct.nii.gz')
    _write_json(anat / f'{subject}_ct.json', _ct_sidecar(site.ct, ct))
    sourcedata = root / 'sourcedata' / subject
    write_ct_dicom_series(
        ct,
        sourcedata / 'dicom',
        meta=_ct_dicom_meta(site.ct, ct),
        series_description=f'Head {site.ct.kernel}',
        patient_id=subject,
        uid_seed=f'mrctprep-demo/{seed}/{subject}',
    )
    (sourcedata / 'nrrd').mkdir()
    _write_nrrd(ct, sourcedata / 'nrrd' / f'{subject}_ct.nrrd')


def _write_metadata(root: Path, seed: int, participants: Sequence[Participant]) -> None:
    _write_json(
        root / 'dataset_description.json',
        {
            'Name': 'mrctprep demo',
            'BIDSVersion': '1.10.0',
            'DatasetType': 'raw',
            'License': 'CC0',
            'GeneratedBy': [
                {
                    'Name': 'mrctprep',
                    'Version': __version__,
                    'Description': f'mrctprep demo, seed {seed}',
                }
            ],
            'ReferencesAndLinks': [
                'Fonov et al. (2009) NeuroImage 47:S102. doi:10.1016/S1053-8119(09)70884-5',
                'Fonov et al. (2011) NeuroImage 54:313-327. doi:10.1016/j.neuroimage.2010.07.033',
            ],
        },
    )
    rows = ''.join(f'- sub-{p.label}: anatomy {p.anatomy} at {p.site}\n' for p in participants)
    (root / 'README').write_text(_README.format(version=__version__, seed=seed, participants=rows))
    (root / '.bidsignore').write_text('*_ct.*\n')
    lines = ['participant_id\tsite\ttraveller\tage\tsex']
    lines += [f'sub-{p.label}\t{p.site}\t{p.anatomy}\t{p.age}\t{p.sex}' for p in participants]
    (root / 'participants.tsv').write_text('\n'.join(lines) + '\n')
    _write_json(root / 'participants.json', _participants_json(participants))


def _participants_json(participants: Sequence[Participant]) -> dict[str, object]:
    levels: dict[str, str] = {}
    for site in dict.fromkeys(p.site for p in participants):
        levels[site] = _SITE_LEVELS.get(site) or (
            'Philips Ingenia 3 T (synthetic): contrast and bias between those of siteA and siteB'
        )
    travellers = {p.anatomy: anatomy_description(p.anatomy) for p in participants}
    return {
        **_PARTICIPANTS_JSON,
        'site': {**_PARTICIPANTS_JSON['site'], 'Levels': levels},
        'traveller': {**_PARTICIPANTS_JSON['traveller'], 'Levels': travellers},
    }


def _write_dataset(root: Path, seed: int, participants: Sequence[Participant]) -> None:
    _write_metadata(root, seed, participants)
    template = load_mni152_tissues()
    for name in dict.fromkeys(p.anatomy for p in participants):
        anatomy = build_anatomy(name, template)
        for participant in (p for p in participants if p.anatomy == name):
            start = time.perf_counter()
            _write_participant(root, participant, anatomy, seed)
            LOGGER.info(
                'sub-%s (anatomy %s, %s) written in %.1f s',
                participant.label,
                participant.anatomy,
                participant.site,
                time.perf_counter() - start,
            )


def write_demo_dataset(
    bids_dir: Path | str, *, seed: int = 0, participants_per_site: int = 2, sites: int = 2
) -> list[str]:
    """Write the demo BIDS dataset into ``bids_dir`` (new or empty); return its labels.

    ``participants_per_site`` travellers are each scanned at every one of ``sites`` sites.

    The dataset is built in a hidden sibling directory and renamed into place at the end, so
    an interrupted run leaves nothing half-written behind.
    """
    bids_dir = Path(bids_dir)
    if bids_dir.exists() and (not bids_dir.is_dir() or any(bids_dir.iterdir())):
        raise FileExistsError(
            f'{bids_dir} already exists and is not an empty directory; '
            'the demo dataset needs a new or empty one'
        )
    bids_dir.parent.mkdir(parents=True, exist_ok=True)
    participants = demo_participants(participants_per_site, sites)
    staging = Path(tempfile.mkdtemp(prefix=f'.{bids_dir.name}.', dir=bids_dir.parent))
    try:
        _write_dataset(staging, seed, participants)
        staging.chmod(0o755)
        if bids_dir.exists():
            bids_dir.rmdir()
        staging.rename(bids_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [p.label for p in participants]
