"""The ``mr-harmonize`` pipeline: mr-preproc, then IGUANe's generator, in MNI and native space."""

from __future__ import annotations

from pathlib import Path

from nipype.pipeline import engine as pe

from mrctprep.core.config import ExecutionOptions, ModelOptions, MROptions
from mrctprep.interfaces.harmonize import CroppedMNIToNative, Harmonize
from mrctprep.interfaces.reports import BeforeAfterRPT
from mrctprep.models.weights import ModelWeights, resolve_weights
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.mr_preproc import init_mr_preproc_wf, template_space
from mrctprep.workflows.nodes import torch_node
from mrctprep.workflows.outputs import init_ds_mr_harmonize

MODEL_NAME = 'iguane'
#: mr-preproc's outputs that map a model-grid image back to the T1w's native grid
_TO_NATIVE = [
    ('model_input_metadata', 'crop_metadata'),
    ('transform', 'transform'),
    ('t1w_preproc', 'reference_file'),
    ('brain_mask', 'mask_file'),
]


def init_mr_harmonize_wf(
    *,
    source_file: str,
    output_dir: str | Path,
    mr: MROptions,
    models: ModelOptions,
    execution: ExecutionOptions,
    name: str = 'mr_preproc_wf',
) -> LiterateWorkflow:
    """mr-preproc's workflow of one T1w, extended: its nodes keep their names (and so their
    cache), and the harmonization nodes are added beside them.

    The weights are resolved (and their SHA-256 checked) here, before anything runs.

    Outputs, beside mr-preproc's: ``space-<space>_res-1_desc-harmonized_T1w`` (the generator's
    output on the model grid) and ``desc-harmonized_T1w`` (the same on the T1w's native RAS+
    grid, zero outside the brain mask), both on the median-500 scale, with sidecars naming the
    weights' SHA-256; figure ``desc-harmonized_T1w.svg`` (input vs harmonized).
    """
    given = models.weights.get(MODEL_NAME)
    weights = resolve_weights(
        MODEL_NAME, explicit=Path(given) if given else None, output_dir=Path(output_dir)
    )
    workflow = init_mr_preproc_wf(
        source_file=source_file, output_dir=output_dir, mr=mr, execution=execution, name=name
    )
    workflow.__desc__ = (workflow.__desc__ or '') + _methods_text(weights)
    preproc = workflow.get_node('outputnode')
    harmonize = torch_node(
        Harmonize,
        name='harmonize',
        execution=execution,
        mem_gb=4,
        weights_file=str(weights.path),
        weights_sha256=weights.sha256,
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
    # fmt: off
    workflow.connect([
        (preproc, harmonize, [('model_input', 'in_file')]),
        (harmonize, to_native, [('out_file', 'in_file')]),
        (preproc, to_native, _TO_NATIVE),
        (preproc, input_to_native, [('model_input', 'in_file'), *_TO_NATIVE]),
        (input_to_native, plot_harmonized, [('out_file', 'before_file')]),
        (to_native, plot_harmonized, [('out_file', 'after_file')]),
    ])
    # fmt: on
    init_ds_mr_harmonize(workflow, output_dir=output_dir, space=template_space(mr.template))
    return workflow


def _methods_text(weights: ModelWeights) -> str:
    reference = weights.card.get('trained', {}).get('ReferenceSite')
    origin = (
        f'trained on this dataset with {reference} as the reference site '
        if reference
        else 'with the weights given '
    )
    return (
        'The preprocessed T1w was then harmonized with IGUANe (Roca et al., 2025), a 3D '
        f'CycleGAN generator ported to PyTorch, {origin}(SHA-256 {weights.sha256[:12]}...); its '
        'output was mapped back to the native grid through the inverse crop and rigid '
        'transform (linear interpolation).\n'
    )
