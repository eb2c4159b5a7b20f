"""The ``superres`` pipeline: UniRes super-resolution of all scans of a subject/session."""

from __future__ import annotations

from pathlib import Path

from bids.layout import parse_file_entities
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import SubjectData
from mrctprep.core.config import ExecutionOptions, SuperresOptions
from mrctprep.imaging.superres.solver import SolverSettings
from mrctprep.interfaces.reports import BeforeAfterRPT
from mrctprep.interfaces.superres import SuperResolution
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.nodes import torch_node
from mrctprep.workflows.outputs import init_ds_superres, select
from mrctprep.workflows.pipelines import ANATOMICAL_INPUTS

#: Entities of a source that a channel's output keeps only when all its repeats share them.
_REPEAT_ENTITIES = ('acquisition', 'ceagent', 'reconstruction', 'run')


def resolution_label(voxel_size: float) -> str:
    """The ``res-`` label of a voxel size: ``1`` for 1 mm, ``0p8`` for 0.8 mm.

    >>> resolution_label(1.0), resolution_label(0.8)
    ('1', '0p8')
    """
    return f'{voxel_size:g}'.replace('.', 'p')


def init_superres_wf(
    *,
    subject_data: SubjectData,
    output_dir: str | Path,
    superres: SuperresOptions,
    execution: ExecutionOptions,
    name: str = 'superres_wf',
) -> LiterateWorkflow:
    """One UniRes model over every scan of a subject/session; one output per channel.

    Channels are BIDS suffixes (T1w, T2w, FLAIR, PDw, ct); the runs of a suffix are repeats
    of its channel. Outputs (``sub-<l>[/ses-<l>]/anat/``), per channel:
    ``sub-<l>_res-<vx>_desc-superres_<suffix>.nii.gz`` (float32, isotropic; the sidecar gives
    ``Resolution``, the grid, lambda, the noise estimates, iterations and convergence) and
    ``figures/sub-<l>_desc-superres_<suffix>.svg`` (the first scan above the result).
    """
    source_files = [
        path for query in ANATOMICAL_INPUTS for path in subject_data.files.get(query, [])
    ]
    suffixes = [parse_file_entities(path)['suffix'] for path in source_files]
    channels = list(dict.fromkeys(suffixes))
    max_iter = superres.max_iter or SolverSettings.max_iter
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = _methods_text(superres, max_iter)

    inputnode = pe.Node(niu.IdentityInterface(fields=['source_files']), name='inputnode')
    inputnode.inputs.source_files = source_files
    outputnode = pe.Node(niu.IdentityInterface(fields=['superres_files']), name='outputnode')
    model = torch_node(
        SuperResolution,
        name='superres',
        execution=execution,
        mem_gb=2.5,
        channels=suffixes,
        voxel_size=superres.voxel_size,
        method=superres.method,
        common_grid=superres.common_grid,
        max_iter=max_iter,
        interleaved=superres.interleaved,
        random_seed=execution.random_seed,
    )
    merge_superres = pe.Node(
        niu.Merge(len(channels)), name='merge_superres', run_without_submitting=True
    )
    # fmt: off
    workflow.connect([
        (inputnode, model, [('source_files', 'in_files')]),
        (merge_superres, outputnode, [('out', 'superres_files')]),
    ])
    # fmt: on
    for index, channel in enumerate(channels):
        channel_files = [
            path for path, s in zip(source_files, suffixes, strict=True) if s == channel
        ]
        _add_channel_outputs(workflow, output_dir, superres, channel, index, channel_files)
    return workflow


def _add_channel_outputs(
    workflow: LiterateWorkflow,
    output_dir: str | Path,
    superres: SuperresOptions,
    channel: str,
    index: int,
    channel_files: list[str],
) -> None:
    """A channel's figure and sinks, and its output into the merged list."""
    model = workflow.get_node('superres')
    plot_superres = pe.Node(
        BeforeAfterRPT(
            title=f'{channel}: {superres.method} super-resolution',
            labels=(
                f'input ({channel_files[0].rsplit("/", 1)[-1]})',
                f'{superres.voxel_size:g} mm',
            ),
        ),
        name=f'plot_superres_{channel}',
    )
    # fmt: off
    workflow.connect([
        (model, plot_superres, [(('input_views', select, index), 'before_file'),
                                (('out_files', select, index), 'after_file')]),
    ])
    # fmt: on
    grid = (
        '(common grid, template field of view)'
        if superres.common_grid
        else '(grid around the inputs)'
    )
    sinks = init_ds_superres(
        workflow,
        output_dir=output_dir,
        channel=channel,
        index=index,
        source_files=channel_files,
        entities={
            **_channel_entities(channel_files),
            'res': resolution_label(superres.voxel_size),
            'desc': 'superres',
        },
        resolution=f'{superres.voxel_size:g} mm isotropic {grid}',
    )
    workflow.connect(
        sinks[f'ds_superres_{channel}'],
        'out_file',
        workflow.get_node('merge_superres'),
        f'in{index + 1}',
    )


def _channel_entities(channel_files: list[str]) -> dict:
    """None (dropped from the output's name) for entities that the repeats do not share."""
    parsed = [parse_file_entities(path) for path in channel_files]
    return {
        key: None
        for key in _REPEAT_ENTITIES
        if len({entities.get(key) for entities in parsed}) > 1
    }


def _methods_text(superres: SuperresOptions, max_iter: int) -> str:
    if superres.method == 'linear':
        return (
            'All anatomical scans of each session were rigidly co-registered to the first '
            '(ANTs, mutual information) and resampled trilinearly onto one '
            f'{superres.voxel_size:g} mm isotropic grid, runs of a contrast averaged.\n'
        )
    interleaved = (
        '; the intensities of odd and even slices of each MR scan were corrected by a fitted '
        "per-scan factor (interleaved acquisition; UniRes's --scale)"
        if superres.interleaved
        else ''
    )
    return (
        'All anatomical scans of each session were super-resolved jointly onto one '
        f'{superres.voxel_size:g} mm isotropic grid with the model of UniRes (Brudfors '
        'et al., 2018, 2019), reimplemented in PyTorch: each scan was rigidly co-registered to '
        'the first (ANTs, mutual information) and modelled by its own projection (slice '
        'profile rectangular through its thick axis, Gaussian in-plane), runs of a contrast as '
        "repeats of one channel; noise and regularisation were estimated from each scan's "
        'histogram (Rician mixture for MR, Gaussian for CT), and the images were fitted under '
        'joint total variation across contrasts by ADMM with conjugate-gradient updates '
        f'(coarse-to-fine regularisation, at most {max_iter} iterations){interleaved}.\n'
    )
