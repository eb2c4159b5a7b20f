"""The ``superres`` pipeline: UniRes super-resolution of all scans of a subject/session."""

from __future__ import annotations

from bids.layout import parse_file_entities
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import SubjectData
from mrctprep.core.config import RunConfig
from mrctprep.core.devices import resolve_device
from mrctprep.imaging.superres.solver import SolverSettings
from mrctprep.interfaces.reports import BeforeAfterRPT
from mrctprep.interfaces.superres import SuperResolution
from mrctprep.workflows.drr import select
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.outputs import derivatives_sink

#: The queries (``--bids-filter-file`` names) whose images enter the model.
SUPERRES_INPUTS = ('t1w', 't2w', 'flair', 'pdw', 'ct')
#: Entities of a source that a channel's output keeps only when all its repeats share them.
_REPEAT_ENTITIES = ('acquisition', 'ceagent', 'reconstruction', 'run')


def resolution_label(voxel_size: float) -> str:
    """The ``res-`` label of a voxel size: ``1`` for 1 mm, ``0p8`` for 0.8 mm.

    >>> resolution_label(1.0), resolution_label(0.8)
    ('1', '0p8')
    """
    return f'{voxel_size:g}'.replace('.', 'p')


def init_superres_wf(
    *, subject_data: SubjectData, config: RunConfig, name: str = 'superres_wf'
) -> LiterateWorkflow:
    """One UniRes model over every scan of a subject/session; one output per channel.

    Channels are BIDS suffixes (T1w, T2w, FLAIR, PDw, ct); the runs of a suffix are repeats
    of its channel. Outputs (``sub-<l>[/ses-<l>]/anat/``), per channel:
    ``sub-<l>_res-<vx>_desc-superres_<suffix>.nii.gz`` (float32, isotropic; the sidecar gives
    ``Resolution``, the grid, lambda, the noise estimates, iterations and convergence) and
    ``figures/sub-<l>_desc-superres_<suffix>.svg`` (the first scan above the result).
    """
    source_files = [
        path for query in SUPERRES_INPUTS for path in subject_data.files.get(query, [])
    ]
    suffixes = [parse_file_entities(path)['suffix'] for path in source_files]
    channels = list(dict.fromkeys(suffixes))
    max_iter = config.superres_max_iter or SolverSettings.max_iter
    label = resolution_label(config.superres_voxel_size)
    output_dir = str(config.output_dir)
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = _methods_text(config, max_iter)

    inputnode = pe.Node(niu.IdentityInterface(fields=['source_files']), name='inputnode')
    inputnode.inputs.source_files = source_files
    outputnode = pe.Node(niu.IdentityInterface(fields=['superres_files']), name='outputnode')
    superres = pe.Node(
        SuperResolution(
            channels=suffixes,
            voxel_size=config.superres_voxel_size,
            method=config.superres_method,
            common_grid=config.superres_common_grid,
            max_iter=max_iter,
            interleaved=config.superres_interleaved,
            random_seed=config.random_seed,
            device=resolve_device(config.device),
            num_threads=config.omp_nthreads,
        ),
        name='superres',
        n_procs=config.omp_nthreads,
        mem_gb=2.5,
    )
    merge_superres = pe.Node(
        niu.Merge(len(channels)), name='merge_superres', run_without_submitting=True
    )
    # fmt: off
    workflow.connect([
        (inputnode, superres, [('source_files', 'in_files')]),
        (merge_superres, outputnode, [('out', 'superres_files')]),
    ])
    # fmt: on
    for index, channel in enumerate(channels):
        channel_files = [
            path for path, s in zip(source_files, suffixes, strict=True) if s == channel
        ]
        entities = _channel_entities(channel_files)
        ds_superres = derivatives_sink(
            f'ds_superres_{channel}',
            output_dir,
            source_file=channel_files,
            entities={**entities, 'res': label, 'desc': 'superres'},
            dtype='float32',
            static_meta={
                'Resolution': f'{config.superres_voxel_size:g} mm isotropic '
                + (
                    '(common grid, template field of view)'
                    if config.superres_common_grid
                    else '(grid around the inputs)'
                )
            },
        )
        plot_superres = pe.Node(
            BeforeAfterRPT(
                title=f'{channel}: {config.superres_method} super-resolution',
                labels=(
                    f'input ({channel_files[0].rsplit("/", 1)[-1]})',
                    f'{config.superres_voxel_size:g} mm',
                ),
            ),
            name=f'plot_superres_{channel}',
        )
        ds_report_superres = derivatives_sink(
            f'ds_report_superres_{channel}',
            output_dir,
            source_file=channel_files,
            entities={**entities, 'desc': 'superres'},
            datatype='figures',
        )
        # fmt: off
        workflow.connect([
            (superres, ds_superres, [(('out_files', select, index), 'in_file'),
                                     (('metadata', select, index), 'meta_dict')]),
            (superres, plot_superres, [(('input_views', select, index), 'before_file'),
                                       (('out_files', select, index), 'after_file')]),
            (plot_superres, ds_report_superres, [('out_report', 'in_file')]),
            (ds_superres, merge_superres, [('out_file', f'in{index + 1}')]),
        ])
        # fmt: on
    return workflow


def _channel_entities(channel_files: list[str]) -> dict:
    """None (dropped from the output's name) for entities that the repeats do not share."""
    parsed = [parse_file_entities(path) for path in channel_files]
    return {
        key: None
        for key in _REPEAT_ENTITIES
        if len({entities.get(key) for entities in parsed}) > 1
    }


def _methods_text(config: RunConfig, max_iter: int) -> str:
    if config.superres_method == 'linear':
        return (
            'All anatomical scans of each session were rigidly co-registered to the first '
            '(ANTs, mutual information) and resampled trilinearly onto one '
            f'{config.superres_voxel_size:g} mm isotropic grid, runs of a contrast averaged.\n'
        )
    interleaved = (
        '; the intensities of odd and even slices of each MR scan were corrected by a fitted '
        "per-scan factor (interleaved acquisition; UniRes's --scale)"
        if config.superres_interleaved
        else ''
    )
    return (
        'All anatomical scans of each session were super-resolved jointly onto one '
        f'{config.superres_voxel_size:g} mm isotropic grid with the model of UniRes (Brudfors '
        'et al., 2018, 2019), reimplemented in PyTorch: each scan was rigidly co-registered to '
        'the first (ANTs, mutual information) and modelled by its own projection (slice '
        'profile rectangular through its thick axis, Gaussian in-plane), runs of a contrast as '
        "repeats of one channel; noise and regularisation were estimated from each scan's "
        'histogram (Rician mixture for MR, Gaussian for CT), and the images were fitted under '
        'joint total variation across contrasts by ADMM with conjugate-gradient updates '
        f'(coarse-to-fine regularisation, at most {max_iter} iterations){interleaved}.\n'
    )
