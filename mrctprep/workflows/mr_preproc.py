"""The ``mr-preproc`` pipeline: IGUANe's preprocessing of a T1w, with every output kept."""

from __future__ import annotations

import re
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.config import ExecutionOptions, MROptions
from mrctprep.core.templates import TEMPLATE_NAME
from mrctprep.interfaces.mr import (
    IguaneCrop,
    MedianNormalise,
    N4BiasCorrection,
    ResampleToMNI,
    RigidRegistration,
    SkullStrip,
)
from mrctprep.interfaces.reorient import Reorient
from mrctprep.interfaces.reports import ContourMosaicRPT, RegistrationRPT
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.nodes import torch_node
from mrctprep.workflows.outputs import init_ds_mr_preproc

_SKULL_STRIP_TEXT = {
    'hdbet': 'HD-BET (Isensee et al., 2019; one network, no test-time augmentation)',
    'hdbet-accurate': 'HD-BET (Isensee et al., 2019; five networks with mirroring)',
    'deepbet': 'deepbet (Fisch et al., 2024)',
    'none': 'the non-zero voxels of the already skull-stripped input',
}


def template_space(template: Path | None) -> str:
    """The ``space-`` label: the template really registered to."""
    if template is None:
        return TEMPLATE_NAME
    return re.sub(r'[^A-Za-z0-9]', '', template.name.split('.')[0]) or 'custom'


def skull_strip_mode(method: str, device: str) -> tuple[str, bool]:
    """``hdbet`` means HD-BET's accurate mode with mirroring on a GPU, its fast mode on CPU.

    ``device`` is the run's resolved device (never ``auto``).

    >>> skull_strip_mode('hdbet', 'cuda:1'), skull_strip_mode('hdbet', 'cpu')
    (('hdbet-accurate', True), ('hdbet', False))
    """
    if method == 'hdbet' and device.startswith('cuda'):
        return 'hdbet-accurate', True
    return method, method == 'hdbet-accurate'


# Longer than most: its ten steps and their connections are the pipeline, read best together.
def init_mr_preproc_wf(
    *,
    source_file: str,
    output_dir: str | Path,
    mr: MROptions,
    execution: ExecutionOptions,
    name: str = 'mr_preproc_wf',
) -> LiterateWorkflow:
    """Reorient, skull strip, N4, rigid to MNI, resample, median to 500, crop; sink all.

    Outputs (``sub-<l>/anat/``): ``desc-preproc_T1w`` (RAS+, N4-corrected, whole head),
    ``desc-brain_mask``, ``desc-biasfield_T1w``, the ``from-T1w_to-<space>`` transform and its
    inverse (ITK text) and FLIRT matrix (``.mat``), ``space-<space>_res-1_desc-preproc_T1w``
    and ``_desc-brain_mask`` on FSL's MNI152 grid, ``space-<space>_res-1_desc-norm_T1w`` (the
    IGUANe model input), and figures ``desc-brainmask_T1w.svg``, ``space-<space>_T1w.svg``.
    Its ``outputnode`` gives what mr-harmonize builds on.
    """
    space = template_space(mr.template)
    skull_strip_method, tta = skull_strip_mode(mr.skull_strip, execution.device)
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = _methods_text(skull_strip_method, space)
    threads = execution.omp_nthreads

    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    inputnode.inputs.source_file = source_file
    reorient = pe.Node(Reorient(), name='reorient')
    skull_strip = torch_node(
        SkullStrip,
        name='skull_strip',
        execution=execution,
        mem_gb=3,
        method=skull_strip_method,
        test_time_augmentation=tta,
    )
    n4 = pe.Node(N4BiasCorrection(num_threads=threads), name='n4', n_procs=threads, mem_gb=1.5)
    register = pe.Node(
        RigidRegistration(random_seed=execution.random_seed), name='register', mem_gb=1.5
    )
    resample_t1w = pe.Node(ResampleToMNI(interpolation='linear'), name='resample_t1w')
    resample_mask = pe.Node(ResampleToMNI(interpolation='nearest'), name='resample_mask')
    normalise = pe.Node(MedianNormalise(), name='normalise')
    crop = pe.Node(IguaneCrop(), name='crop')
    if mr.template:
        register.inputs.template_file = str(mr.template)
    # The native T1w's sidecar records both the reorientation and the bias correction.
    t1w_metadata = pe.Node(niu.Merge(2), name='t1w_metadata', run_without_submitting=True)

    # fmt: off
    workflow.connect([
        (inputnode, reorient, [('source_file', 'in_file')]),
        (reorient, skull_strip, [('out_file', 'in_file')]),
        (reorient, n4, [('out_file', 'in_file')]),
        (skull_strip, n4, [('out_mask', 'mask_file')]),
        (n4, register, [('out_file', 'in_file')]),
        (skull_strip, register, [('out_mask', 'mask_file')]),
        (n4, resample_t1w, [('out_file', 'in_file')]),
        (register, resample_t1w, [('transform', 'transform')]),
        (skull_strip, resample_mask, [('out_mask', 'in_file')]),
        (register, resample_mask, [('transform', 'transform')]),
        (resample_t1w, normalise, [('out_file', 'in_file')]),
        (resample_mask, normalise, [('out_file', 'mask_file')]),
        (normalise, crop, [('out_file', 'in_file'), ('metadata', 'in_metadata')]),
        (reorient, t1w_metadata, [('metadata', 'in1')]),
        (n4, t1w_metadata, [('metadata', 'in2')]),
    ])
    # fmt: on
    _add_figures(workflow, space=space, template=mr.template)
    _add_outputnode(workflow, init_ds_mr_preproc(workflow, output_dir=output_dir, space=space))
    return workflow


def _add_outputnode(workflow: LiterateWorkflow, sinks: dict[str, pe.Node]) -> None:
    """What mr-harmonize builds on: the written native T1w, mask, transform and model input."""
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                't1w_preproc',
                'brain_mask',
                'transform',
                'model_input',
                'model_input_metadata',
            ]
        ),
        name='outputnode',
    )
    # fmt: off
    workflow.connect([
        (sinks['ds_t1w'], outputnode, [('out_file', 't1w_preproc')]),
        (sinks['ds_mask'], outputnode, [('out_file', 'brain_mask')]),
        (sinks['ds_xfm'], outputnode, [('out_file', 'transform')]),
        (sinks['ds_model_input'], outputnode, [('out_file', 'model_input')]),
        (workflow.get_node('crop'), outputnode, [('metadata', 'model_input_metadata')]),
    ])
    # fmt: on


def _add_figures(workflow: LiterateWorkflow, *, space: str, template: Path | None) -> None:
    """The brain mask over the native T1w, and the template's edges over the MNI-grid brain."""
    plot_mask = pe.Node(
        ContourMosaicRPT(title='Brain mask over the T1w (native space)'), name='plot_mask'
    )
    plot_registration = pe.Node(
        RegistrationRPT(
            title=f'T1w brain on the MNI grid flickering with the {space} template (edges green)'
        ),
        name='plot_registration',
    )
    if template:
        plot_registration.inputs.template_file = str(template)
    # fmt: off
    workflow.connect([
        (workflow.get_node('n4'), plot_mask, [('out_file', 'in_file')]),
        (workflow.get_node('skull_strip'), plot_mask, [('out_mask', 'contour_file')]),
        (workflow.get_node('normalise'), plot_registration, [('out_file', 'in_file')]),
    ])
    # fmt: on


def _methods_text(skull_strip_method: str, space: str) -> str:
    return (
        'Each T1w image was preprocessed following IGUANe (Roca et al., 2025): voxel axes were '
        f'reordered to RAS+; the brain was extracted with {_SKULL_STRIP_TEXT[skull_strip_method]}'
        '; intensity non-uniformity was corrected with N4 (SimpleITK, fitted inside the brain '
        'mask at a quarter of the resolution); the brain was registered rigidly (6 DOF, ANTs '
        f'QuickRigid via antspyx) to the {space} 1 mm brain template, and the image (linear) '
        "and mask (nearest neighbour) were resampled onto FSL's 182x218x182 MNI152 grid; brain "
        'intensities were scaled to a median of 500 and the volume cropped to 160x192x160 by '
        "IGUANe's rule.\n"
    )
