"""Radiographs as plain 2D images in [0, 1]: real ones as users keep them (DICOM CR/DX, PNG,
JPEG of any bit depth) and the DRRs the ``drr`` pipeline writes, and the distances between two
sets of them that tell how alike they look.

Every image is read as displayed (DICOM: modality and VOI LUT applied, MONOCHROME1 inverted so
that bone is bright) and then min-max scaled to [0, 1], as SyntheX normalises its DRRs; arrays
are ``(rows, columns)`` with row 0 at the top.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

LOGGER = logging.getLogger(__name__)

#: A 2D image, (rows, columns), float32.
Radiograph = npt.NDArray[np.float32]
PICTURE_SUFFIXES = ('.png', '.jpg', '.jpeg')
DICOM_SUFFIXES = ('.dcm', '.dicom', '')
NIFTI_SUFFIXES = ('.nii', '.nii.gz')
HISTOGRAM_BINS = 256
SPECTRUM_BINS = 64


class RadiographReadError(ValueError):
    """A file that is not a readable single-frame grayscale radiograph."""


def min_max(image: npt.NDArray[Any]) -> Radiograph:
    """``image`` scaled to [0, 1] (a constant image to 0)."""
    image = np.asarray(image, np.float32)
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def read_radiograph(path: Path) -> Radiograph:
    """One radiograph in [0, 1] from a DICOM, PNG, JPEG or DRR NIfTI file, by its suffix."""
    name = path.name.lower()
    try:
        if name.endswith(PICTURE_SUFFIXES):
            return min_max(_read_picture(path))
        if name.endswith(NIFTI_SUFFIXES):
            # the drr pipeline's NIfTI holds (column, row)
            data = np.asanyarray(nb.load(path).dataobj, np.float32)  # type: ignore[attr-defined]
            return min_max(np.squeeze(data).T)
        return min_max(_read_dicom(path))
    except RadiographReadError:
        raise
    except (OSError, ValueError, UnidentifiedImageError, AttributeError, KeyError) as exc:
        raise RadiographReadError(f'{path}: cannot read as a radiograph ({exc})') from None


def _read_picture(path: Path) -> npt.NDArray[Any]:
    with Image.open(path) as picture:
        if picture.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F', 'L'):
            return np.asarray(picture)
        # colour or palette images: their luminance
        return np.asarray(picture.convert('L'))


def _read_dicom(path: Path) -> npt.NDArray[Any]:
    """Pixel data as displayed: modality LUT (rescale), VOI LUT or window, MONOCHROME1
    inverted."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise RadiographReadError(f'{path}: not a DICOM file ({exc})') from None
    photometric = str(dataset.get('PhotometricInterpretation', ''))
    if photometric not in ('MONOCHROME1', 'MONOCHROME2'):
        raise RadiographReadError(
            f'{path}: photometric interpretation {photometric or "missing"}, '
            'expected a grayscale radiograph (MONOCHROME1/2)'
        )
    pixels = dataset.pixel_array
    if pixels.ndim != 2:
        raise RadiographReadError(f'{path}: {pixels.ndim}D pixel data, expected one 2D image')
    shown = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
    shown = np.asarray(shown, np.float32)
    return shown.max() - shown if photometric == 'MONOCHROME1' else shown


def radiograph_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (recursively) that may hold radiographs, sorted; hidden files
    and sidecars left out."""
    return sorted(
        path
        for path in folder.rglob('*')
        if path.is_file()
        and not path.name.startswith('.')
        and not path.name.lower().endswith(('.json', '.txt', '.tsv', '.csv', '.md'))
    )


def iter_radiographs(files: Iterable[Path]) -> Iterator[tuple[Path, Radiograph]]:
    """The readable ones of ``files`` with their images, read one at a time (a thousand
    full-size radiographs as floats would not fit in memory); each unreadable file is skipped
    with one warning line."""
    for path in files:
        try:
            yield path, read_radiograph(path)
        except RadiographReadError as exc:
            LOGGER.warning('skipped: %s', exc)


def histogram_wasserstein(images: Sequence[Radiograph], references: Sequence[Radiograph]) -> float:
    """Wasserstein-1 distance between the pooled intensity histograms of two sets of images
    in [0, 1] (256 bins): the area between their cumulative histograms."""
    cumulative = [np.cumsum(_histogram(group)) for group in (images, references)]
    return float(np.abs(cumulative[0] - cumulative[1]).sum() / HISTOGRAM_BINS)


def _histogram(images: Sequence[Radiograph]) -> npt.NDArray[np.float64]:
    counts = sum(np.histogram(i, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0] for i in images)
    counts = np.asarray(counts, np.float64)
    return counts / counts.sum()


def radial_power_spectrum(image: Radiograph) -> npt.NDArray[np.float64]:
    """Log10 of the radially averaged power spectrum of the zero-mean image, in 64 bins of
    spatial frequency from 0 to Nyquist (cycles per pixel, so images of different size
    compare)."""
    rows, columns = image.shape
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2 / image.size
    frequency = np.hypot(
        *np.meshgrid(np.fft.fftfreq(rows), np.fft.fftfreq(columns), indexing='ij')
    )
    which = np.minimum((frequency / 0.5 * SPECTRUM_BINS).astype(int), SPECTRUM_BINS)
    total = np.bincount(which.ravel(), power.ravel(), minlength=SPECTRUM_BINS + 1)
    count = np.bincount(which.ravel(), minlength=SPECTRUM_BINS + 1)
    spectrum = total[1:SPECTRUM_BINS] / np.maximum(count[1:SPECTRUM_BINS], 1)
    return np.log10(spectrum + 1e-12)


def spectrum_distance(images: Sequence[Radiograph], references: Sequence[Radiograph]) -> float:
    """Root mean square difference of the mean log radial power spectra of two image sets
    (decades of power)."""
    mean = [np.mean([radial_power_spectrum(i) for i in g], axis=0) for g in (images, references)]
    return float(np.sqrt(np.mean((mean[0] - mean[1]) ** 2)))


def gradient_correlation(image: Radiograph, other: Radiograph, sigma: float = 2.0) -> float:
    """Pearson correlation of the gradient magnitudes (Gaussian derivatives at ``sigma``
    pixels: the edges of anatomy rather than pixel noise) of two images of one size: how much
    of one image's structure the other keeps."""
    magnitudes = [
        ndimage.gaussian_gradient_magnitude(np.asarray(i, np.float64), sigma).ravel()
        for i in (image, other)
    ]
    return float(np.corrcoef(magnitudes[0], magnitudes[1])[0, 1])
