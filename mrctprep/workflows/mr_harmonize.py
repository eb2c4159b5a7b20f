"""The ``mr-harmonize`` pipeline: mr-preproc, then IGUANe's generator, in MNI and native space."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from nipype.pipeline import engine as pe

from mrctprep.core.bids import SubjectData
from mrctprep.core.config import RunConfig
from mrctprep.interfaces.harmonize import CroppedMNIToNative, Harmonize
from mrctprep.interfaces.reports import BeforeAfterRPT
from mrctprep.models.weights import ModelWeights, resolve_weights
from mrctprep.workflows.images import init_per_image_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.mr_preproc import (
    MNI_GRID,
    MR_PREPROC_INPUTS,
    init_mr_preproc_image_wf,
    template_space,
)
from mrctprep.workflows.outputs import derivatives_sink

MODEL_NAME = 'iguane'


def init_mr_harmonize_wf(
    *, subject_data: SubjectData, config: RunConfig, name: str = 'mr_preproc_wf'
) -> LiterateWorkflow:
    """mr-preproc for every T1w of a subject, each followed by its harmonization.

    The weights are resolved (and their SHA-256 checked) here, before anything runs.
    """
    explicit = config.weights.get(MODEL_NAME)
    weights = resolve_weights(
        MODEL_NAME, explicit=explicit and Path(explicit), output_dir=config.output_dir
    )
    return init_per_image_wf(
        subject_data=subject_data,
        queries=MR_PREPROC_INPUTS,
        init_image_wf=partial(init_mr_harmonize_image_wf, config=config, weights=weights),
        prefix='mr_preproc',
        name=name,
    )


def init_mr_harmonize_image_wf(
    *, source_file: str, config: RunConfig, weights: ModelWeights, name: str
) -> LiterateWorkflow:
    """mr-preproc's workflow of one T1w, extended: its nodes keep their names (and so their
    cache), and the harmonization nodes are added beside them.

    Outputs, beside mr-preproc's: ``space-<space>_res-1_desc-harmonized_T1w`` (the generator's
    output on the model grid) and ``desc-harmonized_T1w`` (the same on the T1w's native RAS+
    grid, zero outside the brain mask), both on the median-500 scale, with sidecars naming the
    weights' SHA-256; figure ``desc-harmonized_T1w.svg`` (input vs harmonized).
    """
    workflow = init_mr_preproc_image_wf(source_file=source_file, config=config, name=name)
    trained = weights.card.get('trained', {})
    reference = trained.get('ReferenceSite')
    workflow.__desc__ += (
        'The preprocessed T1w was then harmonized with IGUANe (Roca et al., 2025), a 3D '
        'CycleGAN generator ported to PyTorch, '
        + (
            f'trained on this dataset with {reference} as the reference site '
            if reference
            else 'with the weights given '
        )
        + f'(SHA-256 {weights.sha256[:12]}...); its output was mapped back to the native grid '
        'through the inverse crop and rigid transform (linear interpolation).\n'
    )
    space = template_space(config.template)
    preproc = workflow.get_node('outputnode')
    inputnode = workflow.get_node('inputnode')
    harmonize = pe.Node(
        Harmonize(
            weights_file=str(weights.path),
            weights_sha256=weights.sha256,
            device=config.device,
            num_threads=config.omp_nthreads,
        ),
        name='harmonize',
        n_procs=config.omp_nthreads,
        mem_gb=4,
    )
    if weights.trained_patch_size:
        harmonize.inputs.tile = weights.trained_patch_size
    to_native = pe.Node(CroppedMNIToNative(), name='harmonized_to_native', mem_gb=1.5)
    # the model input, mapped back the same way, is the figure's like-for-like 'before'
    input_to_native = pe.Node(CroppedMNIToNative(), name='model_input_to_native', mem_gb=1.5)
    plot_harmonized = pe.Node(
        BeforeAfterRPT(
            title='T1w model input and its harmonization (native space)',
            labels=('input', 'harmonized'),
        ),
        name='plot_harmonized',
    )

    ds_harmonized_mni = derivatives_sink(
        'ds_harmonized_mni',
        config.output_dir,
        entities={'space': space, 'res': '1', 'desc': 'harmonized'},
        static_meta={'SkullStripped': True, **MNI_GRID},
    )
    ds_harmonized = derivatives_sink(
        'ds_harmonized',
        config.output_dir,
        entities={'desc': 'harmonized'},
        static_meta={
            'SkullStripped': True,
            'Resolution': 'native grid of the T1w (RAS+), resampled from the model grid',
        },
    )
    ds_report_harmonized = derivatives_sink(
        'ds_report_harmonized',
        config.output_dir,
        entities={'desc': 'harmonized'},
        datatype='figures',
    )
    # fmt: off
    workflow.connect([
        (preproc, harmonize, [('model_input', 'in_file')]),
        (harmonize, to_native, [('out_file', 'in_file')]),
        (preproc, to_native, [('model_input_metadata', 'crop_metadata'),
                              ('transform', 'transform'),
                              ('t1w_preproc', 'reference_file'),
                              ('brain_mask', 'mask_file')]),
        (preproc, input_to_native, [('model_input', 'in_file'),
                                    ('model_input_metadata', 'crop_metadata'),
                                    ('transform', 'transform'),
                                    ('t1w_preproc', 'reference_file'),
                                    ('brain_mask', 'mask_file')]),
        (input_to_native, plot_harmonized, [('out_file', 'before_file')]),
        (to_native, plot_harmonized, [('out_file', 'after_file')]),
        *[(inputnode, node, [('source_file', 'source_file')])
          for node in (ds_harmonized_mni, ds_harmonized, ds_report_harmonized)],
        (harmonize, ds_harmonized_mni, [('out_file', 'in_file'), ('metadata', 'meta_dict')]),
        (to_native, ds_harmonized, [('out_file', 'in_file')]),
        (harmonize, ds_harmonized, [('metadata', 'meta_dict')]),
        (plot_harmonized, ds_report_harmonized, [('out_report', 'in_file')]),
    ])
    # fmt: on
    return workflow
