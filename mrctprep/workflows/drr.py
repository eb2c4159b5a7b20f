"""The ``drr`` pipeline: synthetic X-rays of each CT on a digital C-arm (DeepDRR's recipe)."""

from __future__ import annotations

from functools import partial
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import SubjectData, read_sidecar
from mrctprep.core.config import RunConfig
from mrctprep.imaging.drr.presets import DRRSettings, resolve_drr_settings
from mrctprep.interfaces.ct import ConformCT
from mrctprep.interfaces.drr import RenderDRR
from mrctprep.interfaces.reports import ContactSheetRPT
from mrctprep.workflows.images import init_per_image_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.outputs import derivatives_sink

#: The queries (``--bids-filter-file`` names) whose images are projected.
DRR_INPUTS = ('ct',)


def drr_options(config: RunConfig) -> dict[str, Any]:
    """The run's ``--drr-*`` options as keyword arguments of :func:`resolve_drr_settings`."""
    options = {
        'preset': config.drr_preset,
        'angles': config.drr_angles,
        'grid': config.drr_view_grid,
        'kvp': config.drr_kvp,
        'output': config.drr_output,
        'detector_pixels': config.drr_detector,
        'pixel_size_mm': config.drr_pixel_size,
        'source_to_detector_mm': config.drr_sdd,
        'source_to_isocentre_mm': config.drr_sid,
        'noise_photons': config.drr_noise,
    }
    return {name: value for name, value in options.items() if value not in (None, [])}


def init_drr_wf(
    *, subject_data: SubjectData, config: RunConfig, name: str = 'drr_wf'
) -> LiterateWorkflow:
    """Project every CT of a subject, one sub-workflow per image."""
    return init_per_image_wf(
        subject_data=subject_data,
        queries=DRR_INPUTS,
        init_image_wf=partial(init_drr_image_wf, config=config),
        prefix='drr',
        name=name,
    )


def init_drr_image_wf(
    *, source_file: str, config: RunConfig, name: str = 'drr_image_wf'
) -> LiterateWorkflow:
    """Conform one CT to HU (as ct-ingest does), render its views, write them with a figure.

    The CT goes through :class:`ConformCT` first: the material thresholds are in HU, so a
    volume stored as HU + 1024 must be shifted back, and scanner padding (-2048, -3024) set to
    air rather than read as vacuum denser than air.

    Outputs (``sub-<l>/anat/``), per view: ``sub-<l>_desc-<view>_drr.nii.gz`` (float32; the
    affine places each pixel on the detector in world mm), ``_drr.png`` (16-bit) and
    ``_drr.json`` (projection matrix, source, geometry, spectrum, thresholds, angles); and
    ``figures/sub-<l>_desc-drr_ct.png``, a contact sheet of the views.
    """
    options = drr_options(config)
    settings = resolve_drr_settings(**options)
    labels = settings.view_labels
    output_dir = str(config.output_dir)
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = _methods_text(settings)
    raw_sidecar = read_sidecar(source_file)

    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    inputnode.inputs.source_file = source_file
    outputnode = pe.Node(niu.IdentityInterface(fields=['drr_files']), name='outputnode')

    conform = pe.Node(ConformCT(), name='conform')
    if raw_sidecar.get('PixelPaddingValue') is not None:
        conform.inputs.padding_value = float(raw_sidecar['PixelPaddingValue'])
    render = pe.Node(
        RenderDRR(
            options=options,
            random_seed=config.random_seed,
            device=config.device,
            num_threads=config.omp_nthreads,
        ),
        name='render',
        n_procs=config.omp_nthreads,
        mem_gb=3,
    )
    plot_views = pe.Node(
        ContactSheetRPT(labels=labels, title=f'{source_file.rsplit("/", 1)[-1]}: DRR views'),
        name='plot_views',
    )
    merge_drr = pe.Node(niu.Merge(len(labels)), name='merge_drr', run_without_submitting=True)
    ds_report_drr = derivatives_sink(
        'ds_report_drr', output_dir, entities={'desc': 'drr'}, datatype='figures'
    )

    # fmt: off
    workflow.connect([
        (inputnode, conform, [('source_file', 'in_file')]),
        (conform, render, [('out_file', 'in_file')]),
        (render, plot_views, [('out_files', 'in_files')]),
        (inputnode, ds_report_drr, [('source_file', 'source_file')]),
        (plot_views, ds_report_drr, [('out_report', 'in_file')]),
        (merge_drr, outputnode, [('out', 'drr_files')]),
    ])
    # fmt: on
    # One sink per view and file type, so that the log names each view as it is written.
    # A view's PNG shares its NIfTI's name and so its sidecar, written with the same content.
    for index, label in enumerate(labels):
        for kind, output, dtype in (
            ('nii', 'out_files', {'dtype': 'float32'}),
            ('png', 'png_files', {}),
        ):
            sink = derivatives_sink(
                f'ds_drr_{label}_{kind}',
                output_dir,
                entities={'desc': label},
                suffix='drr',
                **dtype,
            )
            # fmt: off
            workflow.connect([
                (inputnode, sink, [('source_file', 'source_file')]),
                (render, sink, [((output, select, index), 'in_file'),
                                (('metadata', select, index), 'meta_dict')]),
            ])
            # fmt: on
            if kind == 'nii':
                workflow.connect(sink, 'out_file', merge_drr, f'in{index + 1}')
    return workflow


def select(items: list, index: int):
    """``items[index]``: a connection function (nipype copies its source into the graph)."""
    return items[index]


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
