"""The group-level comparison of MR harmonization: regional means before and after.

``group_harmonization.tsv`` has one row per MNI-space T1w x region (the 24 regions of
:mod:`mrctprep.imaging.regions`): the regional mean of mr-preproc's model input (``raw``, the
``desc-norm`` image), the same after ComBat (``combat``: neuroHarmonize, a statistical baseline
on the regional means themselves), and of the IGUANe output (``iguane``, the ``desc-harmonized``
image of the mr-harmonize pipeline). ComBat is optional (the ``combat`` extra: neuroHarmonize
pins numpy below 2): without it the tables have no ``combat`` column and no ``combat`` row.

``group_harmonization_summary.tsv`` gives, per method, the site effect: for each region the
share of the variance across images that the site explains (eta squared of a one-way ANOVA,
between-site over total sum of squares), averaged over the regions. 0 means the site explains
nothing, 1 that images differ only by site. It is scale-free, so the three columns compare
directly, and works for any number of sites; with few images per site it is biased upwards
(by about (sites - 1) / (images - 1) when there is no site effect at all).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from bids.layout import parse_file_entities

from mrctprep.core.config import InputOptions
from mrctprep.core.derivatives import write_text_atomically
from mrctprep.core.errors import InputError, NoModelInputsError, first_few
from mrctprep.group.sites import ParticipantInfo
from mrctprep.imaging.regions import REGIONS, regional_means

LOGGER = logging.getLogger(__name__)

TABLE_COLUMNS = (
    'participant_id',
    'session_id',
    'image',
    'site',
    'region',
    'raw',
    'combat',
    'iguane',
)
METHODS = ('raw', 'combat', 'iguane')
SUMMARY_COLUMNS = ('method', 'images', 'sites', 'site_effect')

NORM_PATTERN = '*_space-*_res-1_desc-norm_T1w.nii.gz'


@dataclass(frozen=True)
class ModelInput:
    """An mr-preproc model input and, once mr-harmonize has run, its harmonized image."""

    subject: str
    session: str | None
    norm: Path
    harmonized: Path | None


def find_model_inputs(inputs: InputOptions) -> list[ModelInput]:
    """Every ``desc-norm`` T1w of the selected participants in the output dir, sorted."""
    found = []
    for pattern in (f'sub-*/anat/{NORM_PATTERN}', f'sub-*/ses-*/anat/{NORM_PATTERN}'):
        for norm in sorted(inputs.output_dir.glob(pattern)):
            entities = parse_file_entities(str(norm))
            if inputs.participant_label and entities['subject'] not in inputs.participant_label:
                continue
            harmonized = norm.with_name(norm.name.replace('_desc-norm_', '_desc-harmonized_'))
            found.append(
                ModelInput(
                    subject=entities['subject'],
                    session=entities.get('session'),
                    norm=norm,
                    harmonized=harmonized if harmonized.is_file() else None,
                )
            )
    return sorted(found, key=lambda image: image.norm)


def combat_installed() -> bool:
    """Whether neuroHarmonize (the ``combat`` extra) can be imported."""
    return importlib.util.find_spec('neuroHarmonize') is not None


def write_harmonization_tables(
    inputs: InputOptions,
    sites: Mapping[str, ParticipantInfo],
    reference_site: str | None = None,
    *,
    with_combat: bool | None = None,
) -> list[Path]:
    """Write ``group_harmonization.tsv`` and its summary for the participants in ``sites``.

    ``reference_site``: the site ComBat maps the others onto (left unchanged), as IGUANe maps
    every site onto its reference; None maps every site onto the pooled mean.
    ``with_combat``: add the ComBat column; None: when neuroHarmonize is installed.
    """
    images = [image for image in find_model_inputs(inputs) if image.subject in sites]
    if not images:
        raise NoModelInputsError(inputs.output_dir, NORM_PATTERN)
    table = regional_table(images, sites, inputs.output_dir)
    if with_combat is None:
        with_combat = combat_installed()
    if with_combat:
        combat = combat_harmonize(table, sites, reference_site)
        table.insert(table.columns.get_loc('raw') + 1, 'combat', combat)
    else:
        LOGGER.info(
            'No ComBat column: neuroHarmonize is not installed (pip install "mrctprep[combat]"; '
            'it needs numpy < 2, so Python 3.12 or older)'
        )
    summary = summarize_site_effects(table)

    out = inputs.output_dir
    text = table.to_csv(sep='\t', index=False, na_rep='n/a', float_format='%.8g')
    paths = [write_text_atomically(out / 'group_harmonization.tsv', text)]
    text = summary.to_csv(sep='\t', index=False, na_rep='n/a', float_format='%.4f')
    paths.append(write_text_atomically(out / 'group_harmonization_summary.tsv', text))
    effects = ', '.join(
        f'{row.method} {row.site_effect:.3f}'
        if math.isfinite(row.site_effect)
        else f'{row.method} n/a'
        for row in summary.itertuples()
    )
    LOGGER.info('Site effect (mean share of variance explained by site; 0 = none): %s', effects)
    LOGGER.info('%s: %d image(s) x %d regions', paths[0], len(images), len(REGIONS))
    return paths


def regional_table(
    images: list[ModelInput], sites: Mapping[str, ParticipantInfo], output_dir: Path
) -> pd.DataFrame:
    """The long table (image x region) of regional means, without the ``combat`` column."""
    rows = []
    for image in images:
        raw = regional_means(nb.Nifti1Image.from_filename(image.norm))
        iguane = (
            regional_means(nb.Nifti1Image.from_filename(image.harmonized))
            if image.harmonized
            else {}
        )
        for region in REGIONS:
            rows.append(
                {
                    'participant_id': f'sub-{image.subject}',
                    'session_id': f'ses-{image.session}' if image.session else 'n/a',
                    'image': image.norm.relative_to(output_dir).as_posix(),
                    'site': sites[image.subject].site,
                    'region': region,
                    'raw': raw[region],
                    'iguane': iguane.get(region, math.nan),
                }
            )
    return pd.DataFrame(rows, columns=[name for name in TABLE_COLUMNS if name != 'combat'])


def combat_harmonize(
    table: pd.DataFrame, sites: Mapping[str, ParticipantInfo], reference_site: str | None
) -> pd.Series:
    """ComBat-harmonized ``raw`` column (aligned with ``table``); NaN where it cannot run.

    Batches are the sites; age is a covariate (its effect is kept) when every participant has
    one and it is not confounded with site. Regions missing from any image (cropped away) are
    left out, since ComBat needs every feature of every sample.
    """
    not_run = pd.Series(math.nan, index=table.index)
    if not _enough_participants(table, reference_site):
        return not_run
    wide = _complete_regions(table.pivot(index='image', columns='region', values='raw'))
    if wide.empty:
        LOGGER.info('ComBat not run: no region has a value in every image')
        return not_run
    harmonized = _run_combat(wide, _covariates(table, wide.index, sites), reference_site)
    long = (
        pd.DataFrame(harmonized, index=wide.index, columns=wide.columns)
        .reset_index()
        .melt(id_vars='image', var_name='region', value_name='combat')
    )
    merged = table[['image', 'region']].merge(long, on=['image', 'region'], how='left')
    return pd.Series(merged['combat'].to_numpy(), index=table.index)


def _enough_participants(table: pd.DataFrame, reference_site: str | None) -> bool:
    """Two sites or more, each with two participants or more, and the reference among them."""
    participants = table.groupby('site')['participant_id'].nunique()
    if len(participants) < 2:
        LOGGER.info(
            'ComBat not run: it needs at least 2 sites, the participants were scanned at %s only',
            first_few(list(participants.index)),
        )
        return False
    small = participants[participants < 2]
    if len(small):
        LOGGER.info(
            'ComBat not run: it needs at least 2 participants per site to estimate a '
            'site effect; only 1 at %s',
            first_few(list(small.index)),
        )
        return False
    if reference_site is not None and reference_site not in participants.index:
        raise InputError(
            f'reference site {reference_site!r} not found; the participants were scanned at: '
            f'{", ".join(participants.index)}'
        )
    return True


def _complete_regions(wide: pd.DataFrame) -> pd.DataFrame:
    """The regions (columns) that every image has."""
    incomplete = wide.columns[wide.isna().any()]
    if len(incomplete):
        LOGGER.info(
            'ComBat leaves out %d region(s) missing from some image: %s',
            len(incomplete),
            first_few(list(incomplete)),
        )
    return wide.drop(columns=incomplete)


def _covariates(
    table: pd.DataFrame, images: pd.Index, sites: Mapping[str, ParticipantInfo]
) -> pd.DataFrame:
    """``SITE`` per image, and ``AGE`` where every participant has one and it is usable."""
    per_image = table.drop_duplicates('image').set_index('image').loc[images]
    covariates = pd.DataFrame({'SITE': per_image['site'].to_numpy()})
    ages = [sites[label.removeprefix('sub-')].age for label in per_image['participant_id']]
    if any(age is None for age in ages):
        LOGGER.info('ComBat without the age covariate: not every participant has an age')
        return covariates
    covariates['AGE'] = np.array(ages, dtype=float)
    if _confounded(covariates):
        LOGGER.info('ComBat without the age covariate: age is confounded with site')
        return covariates[['SITE']]
    return covariates


def _run_combat(
    wide: pd.DataFrame, covariates: pd.DataFrame, reference_site: str | None
) -> np.ndarray:
    from neuroHarmonize import harmonizationLearn  # the optional `combat` extra

    # neuroHarmonize reports through print(), kept out of the command line's output, and
    # builds np.matrix objects, which numpy flags with a PendingDeprecationWarning.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter('ignore', PendingDeprecationWarning)
        # No seed: without smooth (GAM) terms ComBat is deterministic, and the seed argument
        # would reseed numpy's global generator.
        _, harmonized = harmonizationLearn(wide.to_numpy(), covariates, ref_batch=reference_site)
    if printed.getvalue().strip():
        LOGGER.debug('neuroHarmonize: %s', printed.getvalue().strip())
    return np.asarray(harmonized)


def _confounded(covariates: pd.DataFrame) -> bool:
    """Whether the ComBat design (one column per site, then the covariates) is rank deficient."""
    design = pd.get_dummies(covariates['SITE'], dtype=float)
    design = np.column_stack([design.to_numpy(), covariates.drop(columns='SITE').to_numpy()])
    return bool(np.linalg.matrix_rank(design) < design.shape[1])


def summarize_site_effects(table: pd.DataFrame) -> pd.DataFrame:
    """Per method of the table (ComBat only where it was run): the images and sites with
    values, and the site effect."""
    rows = []
    for method in (method for method in METHODS if method in table.columns):
        values = table.dropna(subset=[method])
        rows.append(
            {
                'method': method,
                'images': values['image'].nunique(),
                'sites': values['site'].nunique(),
                'site_effect': site_effect(values, method),
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def site_effect(table: pd.DataFrame, column: str) -> float:
    """Mean over regions of eta squared: between-site / total sum of squares of ``column``.

    NaN unless there are 2 sites or more with 2 images or more each: a site with one image
    has no spread of its own, so its whole difference would count as site effect.
    """
    values = table.dropna(subset=[column])
    images = values.groupby('site')['image'].nunique()
    if len(images) < 2 or (images < 2).any():
        return math.nan
    by_region = values.groupby('region')[column]
    deviation = values[column] - by_region.transform('mean')
    site_means = values.groupby(['region', 'site'])[column].transform('mean')
    between = ((site_means - by_region.transform('mean')) ** 2).groupby(values['region']).sum()
    total = (deviation**2).groupby(values['region']).sum()
    eta_squared = (between / total).where(total > 0)
    return float(eta_squared.mean())
