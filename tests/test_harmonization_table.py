"""Sites, regional means and the group-level harmonization tables (ComBat baseline, IGUANe)."""

from __future__ import annotations

import json
import logging
import math

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from conftest import write_bids
from mrctprep.cli.errors import describe_error
from mrctprep.core.config import InputOptions
from mrctprep.core.errors import InputError
from mrctprep.group.harmonization import (
    TABLE_COLUMNS,
    combat_installed,
    find_model_inputs,
    write_harmonization_tables,
)
from mrctprep.group.sites import ParticipantInfo, choose_reference_site, read_participant_sites
from mrctprep.imaging.regions import REGIONS, region_atlas, regional_means
from mrctprep.imaging.registration import FSL_MNI152_AFFINE

# mr-preproc's model input: the 160x192x160 crop of FSL's MNI grid at IGUANe's usual start.
CROP_SHAPE = (160, 192, 160)
CROP_AFFINE = FSL_MNI152_AFFINE @ nb.affines.from_matvec(np.eye(3), [11, 13, 11])
SPACE = 'space-MNI152NLin2009aSym_res-1'

needs_combat = pytest.mark.skipif(
    not combat_installed(), reason='ComBat is the optional extra mrctprep[combat]'
)


@pytest.fixture(scope='session')
def atlas() -> np.ndarray:
    return region_atlas(CROP_SHAPE, CROP_AFFINE)


def painted(atlas: np.ndarray, values: np.ndarray) -> nb.Nifti1Image:
    """An image whose region k (of REGIONS) holds values[k] everywhere, background 0."""
    lookup = np.concatenate([[0.0], values]).astype(np.float32)
    return nb.Nifti1Image(lookup[atlas], CROP_AFFINE)


def bids_with(tmp_path, participants_tsv: str | None, sidecars: dict[str, dict]):
    files = {path: json.dumps(content).encode() for path, content in sidecars.items()}
    root = write_bids(tmp_path / 'bids', files, participants=[])
    if participants_tsv is None:
        (root / 'participants.tsv').unlink()
    else:
        (root / 'participants.tsv').write_text(participants_tsv)
    return root


PRISMA = {'Manufacturer': 'Siemens', 'ManufacturerModelName': 'Prisma', 'MagneticFieldStrength': 3}
SIGNA = {'Manufacturer': 'GE', 'ManufacturerModelName': 'Signa HDxt', 'MagneticFieldStrength': 1.5}


def test_sites_come_from_participants_tsv_then_from_the_t1w_sidecars(tmp_path):
    root = bids_with(
        tmp_path,
        'participant_id\tsite\tage\nsub-01\tA\t34\nsub-02\tn/a\t89+\nsub-03\tB\tn/a\n',
        {
            'sub-02/ses-1/anat/sub-02_ses-1_T1w.json': SIGNA,
            'sub-02/ses-2/anat/sub-02_ses-2_T1w.json': SIGNA,
        },
    )
    assert read_participant_sites(root, ['01', 'sub-02', '03']) == {
        '01': ParticipantInfo('01', 'A', 34.0),
        '02': ParticipantInfo('02', 'GE_Signa_HDxt_1p5T', None),
        '03': ParticipantInfo('03', 'B', None),
    }


def test_sites_from_sidecars_when_participants_tsv_has_no_site(tmp_path):
    root = bids_with(tmp_path, None, {'sub-01/anat/sub-01_T1w.json': PRISMA})
    assert read_participant_sites(root, ['01']) == {
        '01': ParticipantInfo('01', 'Siemens_Prisma_3T', None)
    }


def test_a_subject_without_any_site_is_refused_with_the_fix(tmp_path):
    root = bids_with(
        tmp_path, 'participant_id\tage\nsub-01\t30\n', {'sub-01/anat/sub-01_T1w.json': {}}
    )
    with pytest.raises(InputError, match=r'sub-01: no scanning site .* add a "site" column'):
        read_participant_sites(root, ['01'])


def test_sidecars_naming_two_scanners_are_refused(tmp_path):
    root = bids_with(
        tmp_path,
        'participant_id\nsub-01\n',
        {
            'sub-01/ses-1/anat/sub-01_ses-1_T1w.json': PRISMA,
            'sub-01/ses-2/anat/sub-01_ses-2_T1w.json': SIGNA,
        },
    )
    with pytest.raises(InputError, match='different scanners.*GE_Signa_HDxt_1p5T, Siemens_Pri'):
        read_participant_sites(root, ['01'])


def test_reference_site_is_the_largest_then_the_first_alphabetically(caplog):
    caplog.set_level(logging.INFO, logger='mrctprep')
    assert choose_reference_site({'1': 'B', '2': 'B', '3': 'A'}, None) == 'B'
    assert choose_reference_site({'1': 'B', '2': 'C', '3': 'A', '4': 'C', '5': 'A'}, None) == 'A'
    assert 'Reference site: A (2 of 5 participants; tied with C' in caplog.text
    assert choose_reference_site({'1': 'B', '2': 'B', '3': 'A'}, 'A') == 'A'
    with pytest.raises(InputError, match="'Z' not found; .* scanned at: A, B"):
        choose_reference_site({'1': 'B', '3': 'A'}, 'Z')


def test_regional_means_are_exact_over_the_voxels_above_zero(atlas):
    values = 100.0 + 10.0 * np.arange(len(REGIONS))
    img = painted(atlas, values)
    data = np.asanyarray(img.dataobj)
    # Zeroing part of a region (skull stripping) must not change its mean; zeroing all of a
    # region leaves it without a mean.
    first = np.argwhere(atlas == 1)
    data[tuple(first[: len(first) // 2].T)] = 0
    data[atlas == 2] = 0
    means = regional_means(img)
    assert list(means) == list(REGIONS)
    assert math.isnan(means[REGIONS[1]])
    assert {r: v for r, v in means.items() if r != REGIONS[1]} == {
        r: v for r, v in zip(REGIONS, values.tolist(), strict=True) if r != REGIONS[1]
    }


def test_the_atlas_follows_world_coordinates_on_any_grid(atlas):
    # The same regions on a RAS grid (the template's own orientation) as on FSL's LAS crop.
    ras = nb.as_closest_canonical(nb.Nifti1Image(atlas, CROP_AFFINE))
    np.testing.assert_array_equal(region_atlas(ras.shape, ras.affine), np.asanyarray(ras.dataobj))
    x = nb.affines.apply_affine(CROP_AFFINE, np.argwhere(atlas > 0))[:, 0]
    left = np.isin(atlas[atlas > 0], [REGIONS.index(r) + 1 for r in REGIONS if '_left_' in r])
    assert (x[left] < 0).all() and (x[~left] > 0).all()
    assert (np.bincount(atlas.ravel(), minlength=len(REGIONS) + 1)[1:] > 20000).all()


def make_cohort(tmp_path, atlas, sites: dict[str, str], *, harmonized=(), seed=0):
    """desc-norm images with a site effect: site B's regional means x 1.3, plus noise."""
    rng = np.random.default_rng(seed)
    base = np.where(np.char.startswith(np.array(REGIONS), 'gm'), 420.0, 620.0)
    base += rng.normal(0, 15, len(REGIONS))
    out = tmp_path / 'derivatives'
    for subject, site in sites.items():
        values = base * rng.normal(1, 0.04) + rng.normal(0, 6, len(REGIONS))
        values *= 1.3 if site == 'B' else 1.0
        stem = out / f'sub-{subject}/anat/sub-{subject}_{SPACE}'
        stem.parent.mkdir(parents=True)
        nb.save(painted(atlas, values), f'{stem}_desc-norm_T1w.nii.gz')
        if subject in harmonized:
            # A perfect harmonization (for the table's sake): site B brought back to A's scale.
            undone = values / (1.3 if site == 'B' else 1.0)
            nb.save(painted(atlas, undone), f'{stem}_desc-harmonized_T1w.nii.gz')
    config = InputOptions(bids_dir=tmp_path / 'bids', output_dir=out, analysis_level='group')
    return config


def read_tables(config):
    # 'n/a' is missing in the value columns only: session_id keeps it as text.
    missing = {column: ['n/a'] for column in ('raw', 'combat', 'iguane', 'site_effect')}
    read = {'sep': '\t', 'na_values': missing, 'keep_default_na': False}
    table = pd.read_csv(config.output_dir / 'group_harmonization.tsv', **read)
    summary = pd.read_csv(
        config.output_dir / 'group_harmonization_summary.tsv', **read, index_col='method'
    )
    return table, summary


@needs_combat
def test_combat_removes_an_injected_site_effect_and_keeps_the_order_within_sites(tmp_path, atlas):
    site_of = {f'{i:02d}': 'A' if i <= 5 else 'B' for i in range(1, 11)}
    config = make_cohort(tmp_path, atlas, site_of)
    sites = {s: ParticipantInfo(s, site, None) for s, site in site_of.items()}
    write_harmonization_tables(config, sites)
    table, summary = read_tables(config)

    raw, combat = summary.loc['raw', 'site_effect'], summary.loc['combat', 'site_effect']
    assert raw > 0.8
    assert combat <= 0.5 * raw
    assert summary.loc['iguane', 'images'] == 0
    assert math.isnan(summary.loc['iguane', 'site_effect'])
    for _, group in table.groupby(['site', 'region']):
        np.testing.assert_array_equal(group['raw'].rank(), group['combat'].rank())

    # With a reference site, ComBat maps the other site onto it and leaves it unchanged.
    write_harmonization_tables(config, sites, reference_site='A')
    table, summary = read_tables(config)
    site_a = table[table['site'] == 'A']
    np.testing.assert_allclose(site_a['combat'], site_a['raw'], rtol=1e-7)
    assert summary.loc['combat', 'site_effect'] <= 0.5 * raw


@needs_combat
def test_table_columns_and_na_rules(tmp_path, atlas, caplog):
    caplog.set_level(logging.INFO, logger='mrctprep')
    site_of = {'01': 'A', '02': 'A', '03': 'B', '04': 'B', '05': 'B'}
    config = make_cohort(tmp_path, atlas, site_of, harmonized={'01', '02', '03', '04'})
    assert [(i.subject, i.harmonized is not None) for i in find_model_inputs(config)] == [
        ('01', True),
        ('02', True),
        ('03', True),
        ('04', True),
        ('05', False),
    ]
    # Age is given but constant within each site: it cannot be told apart from the site.
    ages = {'A': 30.0, 'B': 60.0}
    sites = {s: ParticipantInfo(s, site, ages[site]) for s, site in site_of.items()}
    paths = write_harmonization_tables(config, sites)
    assert [p.name for p in paths] == [
        'group_harmonization.tsv',
        'group_harmonization_summary.tsv',
    ]
    assert 'age is confounded with site' in caplog.text
    table, summary = read_tables(config)
    assert tuple(table.columns) == TABLE_COLUMNS
    assert len(table) == 5 * len(REGIONS)
    first = table.iloc[0]
    assert (first['participant_id'], first['session_id'], first['site'], first['region']) == (
        'sub-01',
        'n/a',
        'A',
        REGIONS[0],
    )
    assert first['image'] == f'sub-01/anat/sub-01_{SPACE}_desc-norm_T1w.nii.gz'
    assert table['raw'].notna().all() and table['combat'].notna().all()
    without_iguane = table['participant_id'] == 'sub-05'
    assert table.loc[~without_iguane, 'iguane'].notna().all()
    assert table.loc[without_iguane, 'iguane'].isna().all()
    assert summary.loc['iguane', 'images'] == 4
    assert summary.loc['iguane', 'site_effect'] < 0.5 * summary.loc['raw', 'site_effect']

    # One participant at site B: ComBat cannot estimate B's effect, so it is not run, and a
    # site effect needs two images per site.
    write_harmonization_tables(config, {s: sites[s] for s in ('01', '02', '03')})
    assert 'only 1 at B' in caplog.text
    table, summary = read_tables(config)
    assert set(table['participant_id']) == {'sub-01', 'sub-02', 'sub-03'}
    assert table['combat'].isna().all() and summary['site_effect'].isna().all()

    # One site: no site effect to remove or measure.
    write_harmonization_tables(config, {s: sites[s] for s in ('01', '02')})
    assert 'at least 2 sites' in caplog.text
    table, summary = read_tables(config)
    assert table['combat'].isna().all() and summary['site_effect'].isna().all()

    with pytest.raises(InputError) as error:
        write_harmonization_tables(config, {'99': ParticipantInfo('99', 'A', None)})
    message = describe_error(error.value)
    assert 'run the participant level with --pipelines mr-preproc' in message


def test_without_combat_the_tables_leave_its_column_and_row_out(tmp_path, atlas, caplog):
    """What the group tables hold where the combat extra is not installed (or not wanted)."""
    caplog.set_level(logging.INFO, logger='mrctprep')
    site_of = {'01': 'A', '02': 'A', '03': 'B', '04': 'B', '05': 'B'}
    config = make_cohort(tmp_path, atlas, site_of, harmonized={'01', '02', '03', '04'})
    sites = {s: ParticipantInfo(s, site, None) for s, site in site_of.items()}
    write_harmonization_tables(config, sites, with_combat=False)
    assert 'No ComBat column: neuroHarmonize is not installed' in caplog.text
    table, summary = read_tables(config)
    assert tuple(table.columns) == tuple(c for c in TABLE_COLUMNS if c != 'combat')
    assert list(summary.index) == ['raw', 'iguane']
    assert len(table) == 5 * len(REGIONS) and table['raw'].notna().all()
    assert summary.loc['raw', 'site_effect'] > 0.8  # the injected x1.3 at site B
    assert summary.loc['iguane', 'images'] == 4
    assert summary.loc['iguane', 'site_effect'] < 0.5 * summary.loc['raw', 'site_effect']
