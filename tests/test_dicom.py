"""DICOM series to HU volumes, checked against dcm2niix and SimpleITK on real series."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import dcm2niix
import highdicom
import nibabel as nb
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel.orientations import io_orientation
from pydicom.uid import RLELossless, generate_uid
from scipy import ndimage as ndi

from conftest import SHARED_DATA
from mrctprep.imaging.dicom import LPS_FROM_RAS
from mrctprep.imaging.dicom_series import (
    CTVolume,
    DicomSeriesError,
    convert_series,
    group_series,
    read_headers,
)
from mrctprep.importing.ct import import_dataset

GANTRY_TILT = SHARED_DATA / 'dicom' / 'ct_head_ge_gantry_tilt'
JPEG2000 = SHARED_DATA / 'dicom' / 'ct_abdomen_totalseg_j2k'


def convert_folder(folder: Path) -> CTVolume:
    files, skipped = read_headers(sorted(p for p in folder.iterdir() if p.is_file()))
    assert not skipped
    [series] = group_series(files)
    return convert_series(series, name=folder.name)


def run_dcm2niix(folder: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [dcm2niix.bin, '-z', 'y', '-b', 'n', '-f', 'ref', '-o', out_dir, folder],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return sorted(out_dir.glob('ref*.nii.gz'))


def in_ras(img: nb.Nifti1Image) -> nb.Nifti1Image:
    return img.as_reoriented(io_orientation(img.affine))


def read_with_simpleitk(folder: Path) -> nb.Nifti1Image:
    """GDCM's reading of the series, as a NIfTI (SimpleITK applies the rescale)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return nb.Nifti1Image(sitk.GetArrayFromImage(image).transpose(2, 1, 0), LPS_FROM_RAS @ lps)


def copy_files(source: Path, target: Path) -> Path:
    """Copy a folder's files (not their read-only modes) so a test can damage the copies."""
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        shutil.copyfile(path, target / path.name)
    return target


@pytest.fixture(params=['jpeg2000', 'demo-siteA', 'demo-siteB'])
def untilted_series(request) -> Path:
    if request.param == 'jpeg2000':
        return JPEG2000
    subject = {'demo-siteA': 'sub-01', 'demo-siteB': 'sub-02'}[request.param]
    return request.getfixturevalue('demo_bids') / 'sourcedata' / subject / 'dicom'


def test_untilted_series_equal_dcm2niix_and_simpleitk(untilted_series, tmp_path):
    volume = convert_folder(untilted_series)
    ours = in_ras(volume.image)
    [dcm2niix_file] = run_dcm2niix(untilted_series, tmp_path)
    for reference in (
        in_ras(nb.load(dcm2niix_file)),
        in_ras(read_with_simpleitk(untilted_series)),
    ):
        assert ours.shape == reference.shape
        np.testing.assert_array_equal(np.asanyarray(ours.dataobj), reference.get_fdata())
        assert np.abs(ours.affine - reference.affine).max() < 0.01
    assert ours.get_data_dtype() == np.int16
    conversion = volume.sidecar['Conversion']
    assert not conversion['GantryTiltCorrected'] and not conversion['SliceSpacingResampled']
    assert volume.warnings == ()


def test_jpeg2000_series_without_uids_is_one_volume_with_its_acquisition_facts():
    volume = convert_folder(JPEG2000)
    sidecar = volume.sidecar
    assert volume.image.shape == (512, 512, 20)
    assert np.allclose(volume.image.header.get_zooms(), (0.9765625, 0.9765625, 2.0))
    assert sidecar['Conversion']['TransferSyntax'] == [
        'JPEG 2000 Image Compression (Lossless Only)'
    ]
    assert sidecar['Manufacturer'] == 'SIEMENS'
    assert sidecar['KVP'] == 120 and sidecar['SliceThickness'] == 3
    assert sidecar['ExposureTime'] == pytest.approx(0.33)  # DICOM ms, BIDS s
    assert sidecar['ContrastBolusAgent'] == 'APPLIED'
    assert sidecar['CTDIvol'] == pytest.approx(18.54, abs=0.05)
    assert sidecar['ConvolutionKernel'] == 'Br38f\\3'
    assert np.asanyarray(volume.image.dataobj).min() == -1024


def test_gantry_tilt_and_uneven_spacing_are_corrected_like_dcm2niix(tmp_path):
    volume = convert_folder(GANTRY_TILT)
    conversion = volume.sidecar['Conversion']
    assert conversion['GantryDetectorTilt'] == 18.5
    assert conversion['GantryTiltMeasured'] == pytest.approx(18.5, abs=0.05)
    assert conversion['GantryTiltCorrected'] and conversion['SliceSpacingResampled']
    assert conversion['SliceSpacings'] == pytest.approx([1.0811, 4.0019, 6.9986], abs=1e-3)
    assert any('gantry tilt of 18.5 degrees' in message for message in volume.warnings)
    assert any('unequal slice spacing' in message for message in volume.warnings)
    # Padding (-1500) became air before interpolation, so no in-between values appear.
    assert np.asanyarray(volume.image.dataobj).min() == -1024

    # An orthogonal grid with uniform steps: the most common step (4.00 mm; the finer of the
    # 4.00 and 7.00 mm steps, which occur 13 times each).
    axes = volume.image.affine[:3, :3]
    gram = axes.T @ axes
    assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-6
    assert np.sqrt(np.diag(gram)) == pytest.approx([0.48828, 0.48828, 4.0019], abs=1e-4)
    assert volume.image.shape == (512, 611, 37)

    # dcm2niix's tilt-corrected, equalised volume (2.62 mm steps), sampled at our voxels.
    reference = nb.load(next(p for p in run_dcm2niix(GANTRY_TILT, tmp_path) if '_Tilt' in p.name))
    ours = volume.image
    voxels = np.indices(ours.shape).reshape(3, -1)
    to_reference = np.linalg.inv(reference.affine) @ ours.affine
    coordinates = to_reference[:3, :3] @ voxels + to_reference[:3, 3:]
    inside = np.all(
        (coordinates > -1e-3) & (coordinates < np.array(reference.shape)[:, None] - 1 + 1e-3),
        axis=0,
    )
    theirs = ndi.map_coordinates(reference.get_fdata(dtype=np.float32), coordinates, order=1)
    # dcm2niix keeps the padding at -1500; both are compared on the usual HU range.
    theirs = np.clip(theirs[inside], -1024, 3071)
    ours_values = np.clip(np.asanyarray(ours.dataobj).ravel()[inside], -1024, 3071)
    assert inside.mean() > 0.95
    correlation = np.corrcoef(ours_values, theirs)[0, 1]
    assert correlation >= 0.98, correlation


def _compress_rle(dataset: pydicom.Dataset, _: Path) -> None:
    dataset.compress(RLELossless)


def _compress_jpeg_lossless(dataset: pydicom.Dataset, scratch: Path) -> None:
    """Encode with GDCM (through SimpleITK) and move its pixel data into our dataset."""
    writer = sitk.ImageFileWriter()
    writer.SetImageIO('GDCMImageIO')
    writer.SetFileName(str(scratch))
    writer.SetUseCompression(True)
    writer.SetCompressor('JPEG')
    writer.Execute(sitk.GetImageFromArray(dataset.pixel_array.astype(np.uint16)))
    encoded = pydicom.dcmread(scratch)
    for keyword in ('BitsAllocated', 'BitsStored', 'HighBit', 'PixelRepresentation'):
        setattr(dataset, keyword, getattr(encoded, keyword))
    dataset['PixelData'] = encoded['PixelData']
    dataset.file_meta.TransferSyntaxUID = encoded.file_meta.TransferSyntaxUID


@pytest.mark.parametrize(
    ('compress', 'syntax'),
    [
        (_compress_rle, 'RLE Lossless'),
        (_compress_jpeg_lossless, 'JPEG Lossless, Non-Hierarchical, First-Order Prediction'),
    ],
)
def test_compressed_series_decode_to_the_same_hu(demo_bids, tmp_path, compress, syntax):
    source = demo_bids / 'sourcedata' / 'sub-01' / 'dicom'
    target = tmp_path / 'compressed'
    target.mkdir()
    for path in sorted(source.iterdir()):
        dataset = pydicom.dcmread(path)
        compress(dataset, tmp_path / 'scratch.dcm')
        dataset.save_as(target / path.name)
    compressed, plain = convert_folder(target), convert_folder(source)
    assert compressed.sidecar['Conversion']['TransferSyntax'][0].startswith(syntax)
    np.testing.assert_array_equal(
        np.asanyarray(compressed.image.dataobj), np.asanyarray(plain.image.dataobj)
    )
    np.testing.assert_array_equal(compressed.image.affine, plain.image.affine)


@pytest.mark.skipif(
    shutil.which('gdcmconv') is None,
    reason='no JPEG-LS encoder: gdcmconv (Debian: libgdcm-tools) is not installed',
)
def test_jpeg_ls_series_decodes_to_the_same_hu(tmp_path):
    target = tmp_path / 'jpeg-ls'
    target.mkdir()
    for path in sorted(GANTRY_TILT.iterdir()):
        subprocess.run(['gdcmconv', '--jpegls', path, target / path.name], check=True)
    compressed, plain = convert_folder(target), convert_folder(GANTRY_TILT)
    assert compressed.sidecar['Conversion']['TransferSyntax'] == [
        'JPEG-LS Lossless Image Compression'
    ]
    np.testing.assert_array_equal(
        np.asanyarray(compressed.image.dataobj), np.asanyarray(plain.image.dataobj)
    )


def test_a_missing_slice_is_reported_and_interpolated(demo_bids, tmp_path):
    source = demo_bids / 'sourcedata' / 'sub-01' / 'dicom'
    folder = copy_files(source, tmp_path / 'gap')
    (folder / 'IM0012.dcm').unlink()
    volume = convert_folder(folder)
    complete = np.asanyarray(convert_folder(source).image.dataobj)
    assert volume.sidecar['Conversion']['MissingSlices'] == [{'AfterSlice': 11, 'Count': 1}]
    assert any('1 missing slice(s)' in message for message in volume.warnings)
    data = np.asanyarray(volume.image.dataobj)
    assert data.shape == complete.shape
    kept = [k for k in range(complete.shape[2]) if k != 11]
    np.testing.assert_array_equal(data[..., kept], complete[..., kept])
    midway = (complete[..., 10].astype(float) + complete[..., 12]) / 2
    assert np.abs(data[..., 11] - midway).max() <= 0.5


def test_two_slices_at_one_position_are_refused(demo_bids, tmp_path):
    folder = copy_files(demo_bids / 'sourcedata' / 'sub-01' / 'dicom', tmp_path / 'twice')
    duplicate = pydicom.dcmread(folder / 'IM0005.dcm')
    duplicate.SOPInstanceUID = generate_uid()
    duplicate.save_as(folder / 'IM0005b.dcm')
    with pytest.raises(DicomSeriesError, match='lie at the same position'):
        convert_folder(folder)


def test_slices_are_sorted_by_position_not_file_name(demo_bids, tmp_path):
    source = demo_bids / 'sourcedata' / 'sub-01' / 'dicom'
    shuffled = tmp_path / 'shuffled'
    shuffled.mkdir()
    names = sorted(p.name for p in source.iterdir())
    rng = np.random.default_rng(0)
    for path, name in zip(sorted(source.iterdir()), rng.permutation(names), strict=True):
        dataset = pydicom.dcmread(path)
        dataset.InstanceNumber = int(rng.integers(1, 1000))
        dataset.save_as(shuffled / name)
    np.testing.assert_array_equal(
        np.asanyarray(convert_folder(shuffled).image.dataobj),
        np.asanyarray(convert_folder(source).image.dataobj),
    )


def write_enhanced_ct(folder: Path, target: Path) -> Path:
    """The series of ``folder`` as one multi-frame CT (highdicom's Legacy Converted Enhanced
    CT: per-frame plane positions, shared orientation, pixel measures and rescale), each frame's
    tube current moved into a per-frame CT Exposure macro under Enhanced CT's name for it."""
    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    enhanced = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        datasets,
        series_instance_uid=generate_uid(),
        series_number=datasets[0].SeriesNumber,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    for groups in enhanced.PerFrameFunctionalGroupsSequence:
        unassigned = groups.UnassignedPerFrameConvertedAttributesSequence[0]
        exposure = pydicom.Dataset()
        exposure.XRayTubeCurrentInmA = float(unassigned.XRayTubeCurrent)
        groups.CTExposureSequence = [exposure]
        del unassigned.XRayTubeCurrent
    target.parent.mkdir(parents=True, exist_ok=True)
    enhanced.save_as(target)
    return target


def test_enhanced_ct_imports_like_its_single_frames(tmp_path):
    """A real tilted, unevenly spaced series as one multi-frame file (tube current in the CT
    Exposure macro): the import gives the same HU, affine and acquisition facts as the 28
    single-frame files."""
    single = copy_files(GANTRY_TILT, tmp_path / 'single' / 'head')
    multi = write_enhanced_ct(GANTRY_TILT, tmp_path / 'multi' / 'head' / 'ct.dcm')
    images = {}
    for name, source in (('single', single.parent), ('multi', multi.parent.parent)):
        import_dataset(source, tmp_path / f'bids_{name}')
        [image] = sorted((tmp_path / f'bids_{name}').glob('sub-*/anat/*_ct.nii.gz'))
        sidecar = json.loads(image.with_name(image.name.replace('.nii.gz', '.json')).read_text())
        images[name] = (nb.load(image), sidecar)
    (single_img, single_meta), (multi_img, multi_meta) = images['single'], images['multi']
    assert multi_img.shape == single_img.shape == (512, 611, 37)
    assert np.array_equal(np.asanyarray(multi_img.dataobj), np.asanyarray(single_img.dataobj))
    assert np.array_equal(multi_img.affine, single_img.affine)
    facts = ('KVP', 'XRayTubeCurrent', 'ExposureTime', 'ConvolutionKernel', 'SpacingBetweenSlices')
    assert {k: multi_meta[k] for k in facts} == {k: single_meta[k] for k in facts}
    assert multi_meta['Conversion']['FramesRead'] == 28
    assert (
        multi_meta['Conversion']['VaryingAcrossSlices']
        == single_meta['Conversion']['VaryingAcrossSlices']
    )
    assert multi_meta['Conversion']['GantryTiltCorrected'] is True
