"""``mrctprep``'s entry point: parse, check the inputs, build, run, summarise, exit."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

# nipype asks a web service for updates on import; a BIDS App must not touch the network.
os.environ.setdefault('NIPYPE_NO_ET', '1')

from mrctprep.core.errors import (  # noqa: E402
    EXIT_NODE_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    InputError,
    MrctprepError,
    WorkflowBuildError,
)

LOGGER = logging.getLogger('mrctprep')
SUBCOMMANDS = ('demo', 'import', 'import-weights')


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """Run the command line ``argv``; return the exit code."""
    if argv and argv[0] in SUBCOMMANDS and not _is_bids_app_call(argv):
        return _run_subcommand(argv[0], argv[1:])

    from mrctprep.cli.run_options import parse_args

    opts = parse_args(argv)
    verbosity = opts.verbose - opts.quiet
    setup_logging(verbosity)
    try:
        config = _config_from_options(opts, verbosity)
        if config.analysis_level == 'group':
            return run_group(config)
        return run_participant(config)
    except MrctprepError as exc:
        return _report_error(exc, exc.exit_code, verbosity)


def _is_bids_app_call(argv: list[str]) -> bool:
    """``mrctprep demo out participant``: a dataset that happens to be named like a command."""
    return len(argv) >= 3 and argv[2] in ('participant', 'group')


def _report_error(exc: Exception, exit_code: int, verbosity: int) -> int:
    if verbosity > 0:
        traceback.print_exception(exc)
    print(f'mrctprep: error: {exc}', file=sys.stderr)
    return exit_code


def setup_logging(verbosity: int) -> None:
    """-q/-qq quieter, -v/-vv louder (nipype's own levels: :func:`configure_nipype`)."""
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(
        max(verbosity, -2), logging.DEBUG
    )
    logging.basicConfig(
        format='%(asctime)s %(levelname)-7s %(message)s', datefmt='%H:%M:%S', force=True
    )
    logging.getLogger('mrctprep').setLevel(level)


def _config_from_options(opts, verbosity: int):
    from mrctprep.core.bids import read_bids_filters, strip_prefix
    from mrctprep.core.config import RunConfig
    from mrctprep.cli.execution import read_plugin_file
    from mrctprep.cli.run_options import check_locations

    check_locations(opts.bids_dir, opts.output_dir, opts.work_dir)

    plugin, plugin_args = ('MultiProc', {})
    if opts.use_plugin:
        plugin, plugin_args = read_plugin_file(opts.use_plugin)
    if opts.omp_nthreads > opts.nprocs:
        LOGGER.warning('--omp-nthreads %d exceeds --nprocs %d: processes will compete for CPUs',
                       opts.omp_nthreads, opts.nprocs)  # fmt: skip
    return RunConfig(
        bids_dir=opts.bids_dir,
        output_dir=opts.output_dir,
        analysis_level=opts.analysis_level,
        work_dir=opts.work_dir,
        pipelines=list(dict.fromkeys(opts.pipelines)),
        participant_label=strip_prefix(opts.participant_label, 'sub-'),
        session_label=strip_prefix(opts.session_label, 'ses-'),
        bids_filters=read_bids_filters(opts.bids_filter_file) if opts.bids_filter_file else {},
        bids_database_dir=opts.bids_database_dir,
        skip_bids_validation=opts.skip_bids_validation,
        nprocs=opts.nprocs,
        omp_nthreads=opts.omp_nthreads,
        mem_gb=opts.mem_gb,
        plugin=plugin,
        plugin_args=plugin_args,
        device=opts.device,
        skull_strip=opts.skull_strip,
        template=opts.template,
        drr_preset=opts.drr_preset,
        drr_angles=opts.drr_angles or [],
        drr_view_grid=opts.drr_view_grid or [],
        drr_kvp=opts.drr_kvp,
        drr_output=opts.drr_output,
        drr_detector=opts.drr_detector,
        drr_pixel_size=opts.drr_pixel_size,
        drr_sdd=opts.drr_sdd,
        drr_sid=opts.drr_sid,
        drr_noise=opts.drr_noise,
        weights={name: str(path) for name, path in opts.weights or []},
        train=opts.train,
        train_steps=opts.steps,
        train_patch_size=opts.train_patch_size or [],
        checkpoint_every=opts.checkpoint_every,
        resume=opts.resume,
        reference_site=opts.reference_site,
        superres_voxel_size=opts.superres_voxel_size,
        superres_method=opts.superres_method,
        superres_common_grid=opts.superres_common_grid,
        superres_max_iter=opts.superres_max_iter,
        superres_interleaved=opts.superres_interleaved,
        write_graph=opts.write_graph,
        dry_run=opts.dry_run,
        stop_on_first_crash=opts.stop_on_first_crash,
        boilerplate_only=opts.boilerplate_only,
        random_seed=opts.random_seed,
        verbosity=verbosity,
    )


def run_participant(config) -> int:
    """Check inputs, build the graph, write the dataset files, run, report failures."""
    from mrctprep.core.bids import read_dataset_description, validate_bids_dir
    from mrctprep.core.derivatives import (
        write_bidsignore,
        write_derivative_description,
        write_descriptions_tsv,
        write_text_atomically,
    )
    from mrctprep.cli.execution import (
        DropCrashTracebacks,
        collect_failures,
        configure_nipype,
        count_nodes,
        run_workflow,
    )
    from mrctprep.cli.participant import (
        build_workflow,
        plan_subjects,
        write_boilerplate,
        write_workflow_graph,
    )
    from mrctprep.core.devices import resolve_device

    raw_description = read_dataset_description(config.bids_dir)
    if config.skip_bids_validation:
        LOGGER.info('BIDS validation skipped (--skip-bids-validation)')
    else:
        validate_bids_dir(config.bids_dir)
    config.device = resolve_device(config.device)
    LOGGER.info('mrctprep %s, run %s: %s -> %s', config.version, config.run_uuid,
                config.bids_dir, config.output_dir)  # fmt: skip

    plan = plan_subjects(config)
    for label, pipelines in plan.pipelines.items():
        LOGGER.info('%s: %s', label, ', '.join(pipelines))
    configure_nipype(config)
    try:
        workflow = build_workflow(config, plan)
    except MrctprepError:  # missing weights and the like: the user's to fix, with its own code
        raise
    except Exception as exc:  # any failure here is a bug or an unusable setting, not bad data
        raise WorkflowBuildError(f'the workflow could not be built: {exc!r}') from exc

    config.run_work_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(config.run_work_dir / 'config.toml', config.to_toml())
    config.output_dir.mkdir(parents=True, exist_ok=True)
    write_derivative_description(config.bids_dir, config.output_dir, raw_description)
    write_bidsignore(config.output_dir)
    write_descriptions_tsv(config.output_dir)
    citation = write_boilerplate(workflow, config.output_dir)
    if config.boilerplate_only:
        LOGGER.info('Methods text written to %s', citation)
        return EXIT_OK
    for subject in sorted({s.subject for s in plan.subjects}):
        write_text_atomically(config.subject_log_dir(subject) / 'mrctprep.toml', config.to_toml())

    if config.write_graph or config.dry_run:
        graph = write_workflow_graph(workflow, config.output_dir / 'logs' / config.run_uuid)
        LOGGER.info('Workflow graph written to %s', graph)
    if config.dry_run:
        LOGGER.info('Dry run: %d nodes built, none run', count_nodes(workflow))
        return EXIT_OK

    if config.verbosity <= 0:
        logging.getLogger('nipype.workflow').addFilter(DropCrashTracebacks())
    try:
        run_workflow(workflow, config)
    except RuntimeError as exc:
        LOGGER.debug('nipype: %s', exc)
    failures = collect_failures(config)
    if failures:
        LOGGER.error('%d node(s) failed:', len(failures))
        for failure in failures:
            LOGGER.error('  %s failed: %s (crash file: %s)', failure.node, failure.error,
                         failure.crash_file)  # fmt: skip
        done = sorted({s.label for s in plan.subjects} - {f.subject for f in failures})
        LOGGER.error('Subjects that finished: %s', ', '.join(done) or 'none')
        return EXIT_NODE_FAILED
    LOGGER.info('All %d subject(s) finished; outputs in %s', len(plan.subjects), config.output_dir)
    return EXIT_OK


def run_group(config) -> int:
    """Read the participant outputs (never the raw data again) and write the group tables."""
    from mrctprep.group.tables import write_group_tables
    from mrctprep.group.harmonization import find_model_inputs, write_harmonization_tables
    from mrctprep.group.sites import choose_reference_site, read_participant_sites
    from mrctprep.group.training import train_harmonizer

    write_group_tables(config)
    # Only mr-preproc's MNI-space model inputs can be compared across sites.
    model_inputs = find_model_inputs(config)
    if not model_inputs:
        if config.train:
            raise InputError(f'--train {config.train}: no mr-preproc model inputs (*_desc-norm_'
                             f'T1w.nii.gz) in {config.output_dir}; run the participant level '
                             'with --pipelines mr-preproc first')  # fmt: skip
        return EXIT_OK
    try:
        sites = read_participant_sites(config.bids_dir, sorted({i.subject for i in model_inputs}))
    except InputError as exc:
        if config.train:
            raise
        LOGGER.warning('no harmonization tables: %s', exc)
        return EXIT_OK
    reference_site = choose_reference_site(
        {subject: info.site for subject, info in sites.items()}, config.reference_site
    )
    if config.train:
        train_harmonizer(config, model_inputs, sites, reference_site)
    write_harmonization_tables(config, sites, reference_site)
    return EXIT_OK


def _run_subcommand(command: str, argv: list[str]) -> int:
    commands = {'demo': _run_demo, 'import': _run_import, 'import-weights': _run_import_weights}
    return commands[command](argv)


def _run_import(argv: list[str]) -> int:
    import argparse

    from mrctprep.importing.ct import FORMATS, import_dataset

    parser = argparse.ArgumentParser(
        prog='mrctprep import',
        description='Build or extend a BIDS dataset from CT images: a folder of cases '
        '(Dicom_Data/case_1/*.dcm, Nrrd_Data/case_1.nrrd, Nifti_Data/case_1.nii.gz, or the '
        'cases directly in SOURCE). Each case becomes sub-<case>/anat/sub-<case>_ct.nii.gz '
        '(int16 HU) with a JSON sidecar of acquisition facts; the originals are copied to '
        'sourcedata/. Nothing is written unless every case converts.',
    )
    parser.add_argument('source', type=Path, help='the folder of cases')
    parser.add_argument('bids_dir', type=Path, help='the BIDS dataset to create or extend')
    parser.add_argument(
        '--format',
        choices=('auto', *FORMATS),
        default='auto',
        help='import only this format; auto: per case, DICOM, else NRRD, else NIfTI',
    )
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace the CT images (and their sourcedata) of subjects that already have one',
    )
    parser.add_argument('-v', '--verbose', action='count', default=0, help='more output')
    parser.add_argument('-q', '--quiet', action='count', default=0, help='less output')
    opts = parser.parse_args(argv)
    verbosity = opts.verbose - opts.quiet
    setup_logging(verbosity)
    try:
        imported = import_dataset(
            opts.source, opts.bids_dir, source_format=opts.format, overwrite=opts.overwrite
        )
    except MrctprepError as exc:
        return _report_error(exc, exc.exit_code, verbosity)
    LOGGER.info('%d CT image(s) of %d subject(s) imported into %s', len(imported),
                len({p.subject for p in imported}), opts.bids_dir)  # fmt: skip
    return EXIT_OK


def _run_import_weights(argv: list[str]) -> int:
    import argparse

    from mrctprep.models.keras_import import import_keras_weights
    from mrctprep.models.weights import WEIGHTS_SUFFIX, user_cache_dir

    parser = argparse.ArgumentParser(
        prog='mrctprep import-weights',
        description="Convert a model's published weights into mrctprep's format: a torch "
        'state dict FILE.pt with its model card FILE.json (source file and SHA-256). iguane: '
        "the authors' Keras .h5 of the harmonization generator (TensorFlow 2 save_weights or "
        'save), checked layer by layer.',
    )
    parser.add_argument('model', choices=('iguane',), help='the model the weights are for')
    parser.add_argument('source', type=Path, help='the published weights file')
    parser.add_argument(
        '--output',
        type=Path,
        help=f'where to write the weights (a {WEIGHTS_SUFFIX} file); default: the user cache '
        f'{user_cache_dir()}/MODEL{WEIGHTS_SUFFIX}, where runs look for them',
    )
    parser.add_argument('-v', '--verbose', action='count', default=0, help='more output')
    parser.add_argument('-q', '--quiet', action='count', default=0, help='less output')
    opts = parser.parse_args(argv)
    output = opts.output or user_cache_dir() / f'{opts.model}{WEIGHTS_SUFFIX}'
    if output.suffix != WEIGHTS_SUFFIX:
        parser.error(f'--output {output}: must end in {WEIGHTS_SUFFIX} (its card is the .json)')
    verbosity = opts.verbose - opts.quiet
    setup_logging(verbosity)
    try:
        weights = import_keras_weights(opts.source, output)
    except MrctprepError as exc:
        return _report_error(exc, exc.exit_code, verbosity)
    LOGGER.info('%s weights from %s written to %s (SHA-256 %s) with their card beside them',
                opts.model, opts.source, weights.path, weights.sha256)  # fmt: skip
    return EXIT_OK


def _run_demo(argv: list[str]) -> int:
    import argparse

    from mrctprep.demo.dataset import write_demo_dataset

    parser = argparse.ArgumentParser(
        prog='mrctprep demo',
        description='Write a small BIDS dataset (4 subjects: 2 anatomies x 2 sites; T1w + CT, '
        'CT also as DICOM and NRRD under sourcedata/) built from the MNI152 template.',
    )
    parser.add_argument(
        'bids_dir', type=Path, help='where to write it (must not exist or be empty)'
    )
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help="random seed of the scanners' noise and bias fields (the anatomies are fixed)",
    )
    opts = parser.parse_args(argv)
    setup_logging(0)
    try:
        labels = write_demo_dataset(opts.bids_dir.absolute(), seed=opts.seed)
    except (FileExistsError, OSError) as exc:
        return _report_error(exc, EXIT_USAGE, 0)
    LOGGER.info('Demo dataset with %s written to %s', ', '.join(f'sub-{s}' for s in labels),
                opts.bids_dir)  # fmt: skip
    return EXIT_OK
