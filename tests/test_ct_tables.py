"""The group level's CT harmonization table: mean HU and noise per tissue region before and
after ct-harmonize, beside the reference reconstruction's, measured on a phantom whose noise is
known."""

from __future__ import annotations

import csv
import json

import nibabel as nb
import numpy as np
import pytest

from conftest import run_cli, write_bids
from mrctprep.imaging.ct_noise import region_statistics, tissue_regions

#: noise SD (HU) of each reconstruction of the phantom: a sharp low-dose source, its
#: harmonized image and the reference
NOISE_SD = {'before': 40.0, 'after': 12.0, 'reference': 10.0}
TISSUE_HU = {'soft_tissue': 50.0, 'fat': -100.0, 'lung': -850.0}


def _phantom(shape=(120, 100, 3)) -> np.ndarray:
    """A body (soft tissue) in air, with a 14 px ring of fat and two lungs."""
    x, y = np.meshgrid(np.arange(shape[0]) - 60.0, np.arange(shape[1]) - 50.0, indexing='ij')
    hu = np.full(shape[:2], -1000.0)
    hu[(x / 55) ** 2 + (y / 45) ** 2 <= 1] = TISSUE_HU['fat']
    hu[(x / 41) ** 2 + (y / 31) ** 2 <= 1] = TISSUE_HU['soft_tissue']
    for centre in (-20.0, 20.0):
        hu[((x - centre) / 13) ** 2 + (y / 18) ** 2 <= 1] = TISSUE_HU['lung']
    return np.repeat(hu[:, :, None], shape[2], axis=2)


def _noisy(phantom: np.ndarray, sd: float, seed: int) -> np.ndarray:
    return np.rint(phantom + np.random.default_rng(seed).normal(0, sd, phantom.shape))


def test_region_statistics_recover_the_phantoms_means_and_noise():
    phantom = _phantom()
    regions = tissue_regions(_noisy(phantom, NOISE_SD['reference'], 0), pixel_mm=1.0)
    noisy = _noisy(phantom, NOISE_SD['before'], 1)
    statistics = region_statistics(noisy, regions, pixel_mm=1.0)
    assert set(statistics) == set(TISSUE_HU)
    for region, expected_hu in TISSUE_HU.items():
        assert statistics[region].voxels > 500
        assert statistics[region].mean_hu == pytest.approx(expected_hu, abs=3.0)
        assert statistics[region].noise_sd_hu == pytest.approx(NOISE_SD['before'], rel=0.05)


def test_group_level_tabulates_the_kernel_gap_before_and_after(tmp_path):
    bids = write_bids(tmp_path / 'bids', {}, ['01'])
    out = tmp_path / 'out'
    anat = out / 'sub-01' / 'anat'
    anat.mkdir(parents=True)
    phantom = _phantom()
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    images = {
        'sub-01_rec-sharp25_desc-preproc_ct': _noisy(phantom, NOISE_SD['before'], 1),
        'sub-01_rec-standard100_desc-preproc_ct': _noisy(phantom, NOISE_SD['reference'], 2),
        'sub-01_rec-sharp25_desc-harmonized_ct': _noisy(phantom, NOISE_SD['after'], 3),
    }
    for stem, hu in images.items():
        nb.Nifti1Image(hu.astype(np.int16), affine).to_filename(anat / f'{stem}.nii.gz')
        sidecar = {'Sources': [f'bids:raw:sub-01/anat/{stem}.nii.gz'],
                   'OriginalOrientation': 'RAS', 'OriginalShape': list(hu.shape)}  # fmt: skip
        if 'harmonized' in stem:
            sidecar = {'SourceCondition': 'rec-sharp25', 'ReferenceCondition': 'rec-standard100'}
        (anat / f'{stem}.json').write_text(json.dumps(sidecar))

    result = run_cli(bids, out, 'group', '--skip-bids-validation')
    assert result.returncode == 0, result.stderr
    with (out / 'group_ct_harmonization.tsv').open() as stream:
        rows = {row['region']: row for row in csv.DictReader(stream, delimiter='\t')}
    assert set(rows) == set(TISSUE_HU)
    for region, row in rows.items():
        assert (row['participant_id'], row['session_id']) == ('sub-01', 'n/a')
        assert (row['rec'], row['reference_rec']) == ('sharp25', 'standard100')
        for key, sd in NOISE_SD.items():
            assert float(row[f'noise_sd_{key}']) == pytest.approx(sd, rel=0.05), (region, key)
            assert float(row[f'mean_hu_{key}']) == pytest.approx(TISSUE_HU[region], abs=3.0)
    assert 'group_ct_harmonization.tsv' in (out / 'group.html').read_text()
