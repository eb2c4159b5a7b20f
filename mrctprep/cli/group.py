"""The group level: tables of every subject's outputs, harmonization tables, training, and
the group report."""

from __future__ import annotations

import logging

from mrctprep.cli.errors import EXIT_OK
from mrctprep.core.config import RunConfig
from mrctprep.core.errors import InputError
from mrctprep.group.ct_tables import write_group_ct_harmonization
from mrctprep.group.harmonization import (
    NORM_PATTERN,
    find_model_inputs,
    write_harmonization_tables,
)
from mrctprep.group.organ_tables import write_group_organs
from mrctprep.group.sites import choose_reference_site, read_participant_sites
from mrctprep.group.tables import write_group_tables
from mrctprep.reports.group import write_group_report

LOGGER = logging.getLogger(__name__)
#: ``--train`` names that train the sim2real CycleGAN
SIM2REAL_TRAINING = ('cyclegan', 'sim2real')
#: ``--train`` name of EfficientSCN's SCN (from --train-labels)
ORGAN_TRAINING = 'efficientscn'


def run_group(config: RunConfig) -> int:
    """Read the participant outputs (never the raw data again), write the group tables, and
    then ``group.html`` over them (with ``--reports-only``, only the page)."""
    if config.execution.reports_only:
        write_group_report(config.inputs)
        return EXIT_OK
    exit_code = _write_group_tables(config)
    write_group_report(config.inputs)
    return exit_code


def _write_group_tables(config: RunConfig) -> int:
    inputs, models = config.inputs, config.models
    # first: trained on a folder of DRRs, it needs no participant outputs
    if models.train in SIM2REAL_TRAINING:
        from mrctprep.group.sim2real_training import train_sim2real

        train_sim2real(inputs=inputs, models=models, execution=config.execution)
        LOGGER.info(
            'apply with: mrctprep %s %s participant --pipelines drr --drr-sim2real',
            inputs.bids_dir,
            inputs.output_dir,
        )
        return EXIT_OK
    if models.train == ORGAN_TRAINING:
        from mrctprep.group.organ_training import train_organ_segmentation

        train_organ_segmentation(inputs=inputs, models=models, execution=config.execution)
        LOGGER.info(
            'segment with: mrctprep %s %s participant --pipelines organ-seg',
            inputs.bids_dir,
            inputs.output_dir,
        )
        return EXIT_OK
    if models.train == 'ctflow':
        from mrctprep.group.ctflow_training import train_ctflow

        train_ctflow(inputs=inputs, models=models, execution=config.execution)
        return EXIT_OK
    write_group_tables(inputs)
    write_group_organs(inputs)
    write_group_ct_harmonization(inputs)
    # Only mr-preproc's MNI-space model inputs can be compared across sites.
    model_inputs = find_model_inputs(inputs)
    if not model_inputs:
        if models.train:
            raise InputError(
                f'--train {models.train}: no mr-preproc model inputs ({NORM_PATTERN}) in '
                f'{inputs.output_dir}; run the participant level with --pipelines mr-preproc '
                'first'
            )
        return EXIT_OK
    try:
        sites = read_participant_sites(inputs.bids_dir, sorted({i.subject for i in model_inputs}))
    except InputError as exc:
        if models.train:
            raise
        LOGGER.warning('no harmonization tables: %s', exc)
        return EXIT_OK
    reference_site = choose_reference_site(
        {subject: info.site for subject, info in sites.items()}, models.reference_site
    )
    if models.train:
        from mrctprep.group.training import train_harmonizer

        train_harmonizer(
            model_inputs,
            sites,
            reference_site,
            inputs=inputs,
            models=models,
            execution=config.execution,
        )
        LOGGER.info(
            'harmonize with: mrctprep %s %s participant --pipelines mr-harmonize',
            inputs.bids_dir,
            inputs.output_dir,
        )
    write_harmonization_tables(inputs, sites, reference_site)
    return EXIT_OK
