"""The ``mr-preproc`` pipeline: IGUANe's preprocessing of a T1w, with every output kept."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import SubjectData
from mrctprep.core.config import RunConfig
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
from mrctprep.interfaces.reports import ContourOverlayRPT, RegistrationRPT
from mrctprep.workflows.images import init_per_image_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.outputs import derivatives_sink

MR_PREPROC_INPUTS = ('t1w',)
MNI_GRID = {
    'Resolution': "1 mm isotropic on the 182x218x182 grid of FSL's MNI152 (LAS voxel order; "
    'world box x -91..90, y -126..91, z -72..109 mm), the geometry IGUANe was trained on',
}


def template_space(template: Path | None) -> str:
    """The ``space-`` label: the template really registered to."""
    if template is None:
        return TEMPLATE_NAME
    return re.sub(r'[^A-Za-z0-9]', '', template.name.split('.')[0]) or 'custom'


def init_mr_preproc_wf(
    *, subject_data: SubjectData, config: RunConfig, name: str = 'mr_preproc_wf'
) -> LiterateWorkflow:
    """Preprocess every T1w of a subject, one sub-workflow per image."""
    return init_per_image_wf(
        subject_data=subject_data,
        queries=MR_PREPROC_INPUTS,
        init_image_wf=partial(init_mr_preproc_image_wf, config=config),
        prefix='mr_preproc',
        name=name,
    )


def init_mr_preproc_image_wf(
    *, source_file: str, config: RunConfig, name: str = 'mr_preproc_image_wf'
) -> LiterateWorkflow:
    """Reorient, skull strip, N4, rigid to MNI, resample, median to 500, crop; sink all.

    Outputs (``sub-<l>/anat/``): ``desc-preproc_T1w`` (RAS+, N4-corrected, whole head),
    ``desc-brain_mask``, ``desc-biasfield_T1w``, the ``from-T1w_to-<space>`` transform and its
    inverse (ITK text) and FLIRT matrix (``.mat``), ``space-<space>_res-1_desc-preproc_T1w``
    and ``_desc-brain_mask`` on FSL's MNI152 grid, ``space-<space>_res-1_desc-norm_T1w`` (the
    IGUANe model input), and figures ``desc-brainmask_T1w.svg``, ``space-<space>_T1w.svg``.
    """
    space = template_space(config.template)
    skull_strip_method, tta = _skull_strip_mode(config.skull_strip, config.device)
    output_dir = str(config.output_dir)
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = (
        'Each T1w image was preprocessed following IGUANe (Roca et al., 2025): voxel axes were '
        f'reordered to RAS+; the brain was extracted with {_SKULL_STRIP_TEXT[skull_strip_method]}'
        '; intensity non-uniformity was corrected with N4 (SimpleITK, fitted inside the brain '
        'mask at a quarter of the resolution); the brain was registered rigidly (6 DOF, ANTs '
        f'QuickRigid via antspyx) to the {space} 1 mm brain template, and the image (linear) '
        "and mask (nearest neighbour) were resampled onto FSL's 182x218x182 MNI152 grid; brain "
        'intensities were scaled to a median of 500 and the volume cropped to 160x192x160 by '
        "IGUANe's rule.\n"
    )
    threads = config.omp_nthreads
    t1w_meta = {'SkullStripped': False}

    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    inputnode.inputs.source_file = source_file
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
    reorient = pe.Node(Reorient(), name='reorient')
    skull_strip = pe.Node(
        SkullStrip(
            method=skull_strip_method,
            test_time_augmentation=tta,
            device=config.device,
            num_threads=threads,
        ),
        name='skull_strip',
        n_procs=threads,
        mem_gb=3,
    )
    n4 = pe.Node(N4BiasCorrection(num_threads=threads), name='n4', n_procs=threads, mem_gb=1.5)
    register = pe.Node(
        RigidRegistration(random_seed=config.random_seed), name='register', mem_gb=1.5
    )
    if config.template:
        register.inputs.template_file = str(config.template)
    resample_t1w = pe.Node(ResampleToMNI(interpolation='linear'), name='resample_t1w')
    resample_mask = pe.Node(ResampleToMNI(interpolation='nearest'), name='resample_mask')
    normalise = pe.Node(MedianNormalise(), name='normalise')
    crop = pe.Node(IguaneCrop(), name='crop')
    plot_mask = pe.Node(
        ContourOverlayRPT(title='Brain mask over the T1w (native space)'), name='plot_mask'
    )
    plot_registration = pe.Node(
        RegistrationRPT(title=f'T1w brain on the MNI grid, {space} template edges in green'),
        name='plot_registration',
    )
    if config.template:
        plot_registration.inputs.template_file = str(config.template)

    # The native T1w's sidecar records both the reorientation and the bias correction.
    t1w_metadata = pe.Node(niu.Merge(2), name='t1w_metadata', run_without_submitting=True)

    def sink(name, entities, suffix=None, **kwargs):
        if suffix:
            kwargs['suffix'] = suffix
        return derivatives_sink(name, output_dir, entities=entities, **kwargs)

    mni = {'space': space, 'res': '1'}
    ds_t1w = sink('ds_t1w', {'desc': 'preproc'}, static_meta=t1w_meta)
    ds_mask = sink('ds_mask', {'desc': 'brain'}, 'mask', dtype='uint8')
    ds_bias = sink('ds_bias', {'desc': 'biasfield'}, static_meta=t1w_meta)
    ds_xfm = sink('ds_xfm', {'from': 'T1w', 'to': space, 'mode': 'image'}, 'xfm')
    ds_xfm_inverse = sink('ds_xfm_inverse', {'from': space, 'to': 'T1w', 'mode': 'image'}, 'xfm')
    ds_flirt = sink(
        'ds_flirt',
        {'from': 'T1w', 'to': space, 'mode': 'image', 'desc': 'flirt'},
        'xfm',
        static_meta={'Format': 'FSL FLIRT matrix; reference: FSL MNI152 1 mm grid'},
    )
    ds_mni_t1w = sink(
        'ds_mni_t1w', {**mni, 'desc': 'preproc'}, static_meta={**t1w_meta, **MNI_GRID}
    )
    ds_mni_mask = sink(
        'ds_mni_mask',
        {**mni, 'desc': 'brain'},
        'mask',
        dtype='uint8',
        static_meta={'Type': 'Brain', **MNI_GRID},
    )
    ds_model_input = sink(
        'ds_model_input', {**mni, 'desc': 'norm'}, static_meta={'SkullStripped': True, **MNI_GRID}
    )
    ds_report_mask = sink('ds_report_mask', {'desc': 'brainmask'}, datatype='figures')
    ds_report_registration = sink('ds_report_registration', {'space': space}, datatype='figures')
    sinks = [
        ds_t1w,
        ds_mask,
        ds_bias,
        ds_xfm,
        ds_xfm_inverse,
        ds_flirt,
        ds_mni_t1w,
        ds_mni_mask,
        ds_model_input,
        ds_report_mask,
        ds_report_registration,
    ]

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
        (n4, plot_mask, [('out_file', 'in_file')]),
        (skull_strip, plot_mask, [('out_mask', 'contour_file')]),
        (normalise, plot_registration, [('out_file', 'in_file')]),
        *[(inputnode, node, [('source_file', 'source_file')]) for node in sinks],
        (reorient, t1w_metadata, [('metadata', 'in1')]),
        (n4, t1w_metadata, [('metadata', 'in2')]),
        (n4, ds_t1w, [('out_file', 'in_file')]),
        (t1w_metadata, ds_t1w, [('out', 'meta_dict')]),
        (skull_strip, ds_mask, [('out_mask', 'in_file'), ('metadata', 'meta_dict')]),
        (n4, ds_bias, [('bias_field', 'in_file'), ('metadata', 'meta_dict')]),
        (register, ds_xfm, [('transform', 'in_file'), ('metadata', 'meta_dict')]),
        (register, ds_xfm_inverse, [('inverse_transform', 'in_file')]),
        (register, ds_flirt, [('flirt_matrix', 'in_file')]),
        (resample_t1w, ds_mni_t1w, [('out_file', 'in_file')]),
        (register, ds_mni_t1w, [('metadata', 'meta_dict')]),
        (resample_mask, ds_mni_mask, [('out_file', 'in_file')]),
        (crop, ds_model_input, [('out_file', 'in_file'), ('metadata', 'meta_dict')]),
        (plot_mask, ds_report_mask, [('out_report', 'in_file')]),
        (plot_registration, ds_report_registration, [('out_report', 'in_file')]),
        (ds_t1w, outputnode, [('out_file', 't1w_preproc')]),
        (ds_mask, outputnode, [('out_file', 'brain_mask')]),
        (ds_xfm, outputnode, [('out_file', 'transform')]),
        (ds_model_input, outputnode, [('out_file', 'model_input')]),
        (crop, outputnode, [('metadata', 'model_input_metadata')]),
    ])
    # fmt: on
    return workflow


_SKULL_STRIP_TEXT = {
    'hdbet': 'HD-BET (Isensee et al., 2019; one network, no test-time augmentation)',
    'hdbet-accurate': 'HD-BET (Isensee et al., 2019; five networks with mirroring)',
    'deepbet': 'deepbet (Fisch et al., 2024)',
    'none': 'the non-zero voxels of the already skull-stripped input',
}


def _skull_strip_mode(method: str, device: str) -> tuple[str, bool]:
    """``hdbet`` means HD-BET's accurate mode with mirroring on a GPU, its fast mode on CPU."""
    if method == 'hdbet' and device.startswith('cuda'):
        return 'hdbet-accurate', True
    return method, method == 'hdbet-accurate'
