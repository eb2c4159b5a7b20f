"""The ``ct-harmonize`` pipeline: each CT mapped onto a reference reconstruction (CTFlow)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import REC_ENTITY, read_ct_condition
from mrctprep.core.config import ExecutionOptions, ModelOptions
from mrctprep.core.errors import ResourceError
from mrctprep.interfaces.ctflow import CTHarmonizationRPT, HarmonizeCT
from mrctprep.models.weights import resolve_weights
from mrctprep.workflows.ct_conform import init_conform_ct_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.nodes import torch_node
from mrctprep.workflows.outputs import init_ds_ct_harmonize

MODEL_NAME = 'ctflow'


def init_ct_harmonize_wf(
    *,
    source_file: str,
    output_dir: str | Path,
    models: ModelOptions,
    execution: ExecutionOptions,
    name: str = 'ct_harmonize_wf',
) -> LiterateWorkflow:
    """Conform one CT (as ct-ingest does), then harmonize it slice by slice with CTFlow.

    Outputs (``sub-<l>/anat/``): ``desc-harmonized_ct`` (int16 HU on the conformed CT's grid;
    sidecar: weights' SHA-256, source and reference conditions, temperature, samples, seed),
    with ``--ctflow-samples`` N > 1 ``desc-harmonizedstd_ct`` (the samples' SD, float32 HU),
    and ``figures/sub-<l>_desc-ctharmonize_ct.svg``. Weights are resolved when the graph is
    built: missing ones stop the run before anything runs (exit 126, saying how to train them).
    """
    given = models.weights.get(MODEL_NAME)
    weights = resolve_weights(
        MODEL_NAME, explicit=Path(given) if given else None, output_dir=Path(output_dir)
    )
    trained = weights.card.get('trained', {})
    if 'SizeParameters' not in trained:
        raise ResourceError(
            f'{weights.path}: its card names no network size (trained.SizeParameters), which '
            "the cards of mrctprep's CTFlow training carry"
        )
    source_rec = REC_ENTITY.search(Path(source_file).name)
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = (
        'CT images were harmonized onto a reference reconstruction with CTFlow (Wei et al., '
        '2023), a conditional normalizing flow applied to each axial slice at temperature '
        f'{models.ctflow_tau:g} (mean of {models.ctflow_samples} sample(s); weights SHA-256 '
        f'{weights.sha256[:12]}...).\n'
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    inputnode.inputs.source_file = source_file
    conform_ct_wf = init_conform_ct_wf(source_file=source_file)
    harmonize = torch_node(
        HarmonizeCT,
        name='harmonize',
        execution=execution,
        mem_gb=2,
        weights=str(weights.path),
        sha256=weights.sha256,
        size=trained['SizeParameters'],
        tau=models.ctflow_tau,
        samples=models.ctflow_samples,
        seed=execution.random_seed,
    )
    if source_acquisition := read_ct_condition(source_file):
        harmonize.inputs.source_acquisition = source_acquisition
    if source_rec:
        harmonize.inputs.source_condition = f'rec-{source_rec.group(1)}'
    if trained.get('ReferenceRec'):
        harmonize.inputs.reference_condition = f'rec-{trained["ReferenceRec"]}'
    plot = pe.Node(
        CTHarmonizationRPT(title=f'{Path(source_file).name}: CTFlow harmonization'), name='plot'
    )
    # fmt: off
    workflow.connect([
        (inputnode, conform_ct_wf, [('source_file', 'inputnode.source_file')]),
        (conform_ct_wf, harmonize, [('outputnode.out_file', 'in_file')]),
        (conform_ct_wf, plot, [('outputnode.out_file', 'in_file')]),
        (harmonize, plot, [('out_file', 'harmonized_file')]),
    ])
    # fmt: on
    if models.ctflow_samples > 1:
        workflow.connect(harmonize, 'std_file', plot, 'std_file')
    init_ds_ct_harmonize(workflow, output_dir=output_dir, with_std=models.ctflow_samples > 1)
    return workflow
