"""The ``drr`` pipeline: synthetic X-rays of a CT on a digital C-arm (DeepDRR's recipe)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.config import DRROptions, ExecutionOptions, ModelOptions
from mrctprep.imaging.drr.presets import DRRSettings, resolve_drr_settings
from mrctprep.interfaces.drr import RenderDRR
from mrctprep.interfaces.reports import ContactSheetRPT
from mrctprep.interfaces.sim2real import SideBySideRPT, Sim2Real
from mrctprep.models.weights import resolve_weights
from mrctprep.workflows.ct_conform import init_conform_ct_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.nodes import torch_node
from mrctprep.workflows.outputs import init_ds_drr, init_ds_sim2real

SIM2REAL_MODEL = 'sim2real'


def init_drr_wf(
    *,
    source_file: str,
    output_dir: str | Path,
    drr: DRROptions,
    execution: ExecutionOptions,
    models: ModelOptions | None = None,
    name: str = 'drr_wf',
) -> LiterateWorkflow:
    """Conform one CT to HU (as ct-ingest does), render its views, write them with a figure.

    The CT is conformed first: the material thresholds are in HU, so a volume stored as
    HU + 1024 must be shifted back, and scanner padding (-2048, -3024) set to air rather than
    read as vacuum denser than air.

    Outputs (``sub-<l>/anat/``), per view: ``sub-<l>_desc-<view>_drr.nii.gz`` (float32; the
    affine places each pixel on the detector in world mm), ``_drr.png`` (16-bit) and
    ``_drr.json`` (projection matrix, source, geometry, spectrum, thresholds, angles); and
    ``figures/sub-<l>_desc-drr_ct.png``, a contact sheet of the views. With ``drr.sim2real``,
    see :func:`add_sim2real`.
    """
    options = drr.overrides()
    settings = resolve_drr_settings(**options)
    labels = settings.view_labels
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = _methods_text(settings)

    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    inputnode.inputs.source_file = source_file
    outputnode = pe.Node(niu.IdentityInterface(fields=['drr_files']), name='outputnode')
    conform_ct_wf = init_conform_ct_wf(source_file=source_file)
    render = torch_node(
        RenderDRR,
        name='render',
        execution=execution,
        mem_gb=3,
        options=options,
        random_seed=execution.random_seed,
    )
    plot_views = pe.Node(
        ContactSheetRPT(labels=labels, title=f'{source_file.rsplit("/", 1)[-1]}: DRR views'),
        name='plot_views',
    )
    merge_drr = pe.Node(niu.Merge(len(labels)), name='merge_drr', run_without_submitting=True)
    # fmt: off
    workflow.connect([
        (inputnode, conform_ct_wf, [('source_file', 'inputnode.source_file')]),
        (conform_ct_wf, render, [('outputnode.out_file', 'in_file')]),
        (render, plot_views, [('out_files', 'in_files')]),
        (merge_drr, outputnode, [('out', 'drr_files')]),
    ])
    # fmt: on
    sinks = init_ds_drr(workflow, output_dir=output_dir, labels=labels)
    for index, label in enumerate(labels):
        workflow.connect(sinks[f'ds_drr_{label}_nii'], 'out_file', merge_drr, f'in{index + 1}')
    if drr.sim2real:
        add_sim2real(
            workflow,
            output_dir=output_dir,
            labels=labels,
            models=models or ModelOptions(),
            execution=execution,
            source_file=source_file,
        )
    return workflow


def add_sim2real(
    workflow: LiterateWorkflow,
    *,
    output_dir: str | Path,
    labels: list[str],
    models: ModelOptions,
    execution: ExecutionOptions,
    source_file: str,
) -> None:
    """Each rendered view through the sim2real CycleGAN generator (weights resolved and
    checked here, before anything runs; an upstream ``*_net_G_A.pth`` loads as it is).

    Outputs per view: ``sub-<l>_desc-<view>sim2real_drr.nii.gz`` (float32 in [0, 1], the
    DRR's detector affine), ``.png`` (16-bit) and ``.json`` (weights' SHA-256); figure
    ``desc-sim2real_drr.png``: each view's DRR and sim2real image side by side.
    """
    given = models.weights.get(SIM2REAL_MODEL)
    weights = resolve_weights(
        SIM2REAL_MODEL,
        explicit=Path(given) if given else None,
        output_dir=Path(output_dir),
        upstream_checkpoints=True,
    )
    workflow.__desc__ = (workflow.__desc__ or '') + (
        'Each view was then mapped to the appearance of real radiographs with a CycleGAN '
        'generator (Zhu et al., 2017; as in SyntheX, Gao et al., 2023) '
        f'(weights SHA-256 {weights.sha256[:12]}...).\n'
    )
    sim2real = torch_node(
        Sim2Real,
        name='sim2real',
        execution=execution,
        mem_gb=3,
        labels=labels,
        weights_file=str(weights.path),
        weights_sha256=weights.sha256,
    )
    plot_sim2real = pe.Node(
        SideBySideRPT(labels=labels, title=f'{source_file.rsplit("/", 1)[-1]}: DRR | sim2real'),
        name='plot_sim2real',
    )
    render = workflow.get_node('render')
    # fmt: off
    workflow.connect([
        (render, sim2real, [('out_files', 'in_files')]),
        (render, plot_sim2real, [('out_files', 'in_files')]),
        (sim2real, plot_sim2real, [('out_files', 'mapped_files')]),
    ])
    # fmt: on
    init_ds_sim2real(workflow, output_dir=output_dir, labels=labels)


def _methods_text(settings: DRRSettings) -> str:
    carm = settings.carm
    noise = (
        f'Poisson noise for {settings.noise_photons} photons per pixel was added'
        if settings.noise_photons
        else 'no noise or scatter was added'
    )
    return (
        'Digitally reconstructed radiographs were computed from each CT (after the HU check '
        'of the CT ingest step) following DeepDRR (Unberath et al., 2018): HU were converted '
        "to density with DeepDRR's two-segment curve and to air, soft tissue and bone by "
        f'thresholds ({settings.air_max_hu:g} and {settings.bone_min_hu:g} HU); per-material '
        'density path integrals were computed along each ray with one trilinear sample per '
        "voxel plane (Joseph's method) and converted with the polyenergetic Beer-Lambert law "
        f'for a {settings.kvp} kVp spectrum (MC-GPU) and NIST mass attenuation coefficients; '
        f'{noise}. The C-arm ({settings.preset} preset) had a source-to-detector distance of '
        f'{carm.source_to_detector_mm:g} mm, a source-to-isocentre distance of '
        f'{carm.source_to_isocentre_mm:g} mm and a {carm.pixels}x{carm.pixels} detector of '
        f'{carm.pixel_size_mm:g} mm pixels; the patient lay {settings.placement.name} and '
        f'{len(settings.views)} view(s) were rendered; images are given as {settings.output}.\n'
    )
