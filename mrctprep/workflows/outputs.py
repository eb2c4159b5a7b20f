"""Every derivative mrctprep writes, pipeline by pipeline: the ``init_ds_*`` factories.

Each factory lists its pipeline's outputs as :class:`Output` records (BIDS entities, sidecar
fields, and the node output that provides the file) and adds one
:class:`~mrctprep.interfaces.bids.DerivativesDataSink` node per output to the pipeline's
workflow, connected to the nodes that produce them. Sinks sit directly in the pipeline's
workflow, beside the nodes they read from, so their names (and the work directory's cache)
are the same as when they were written inline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nipype.pipeline import engine as pe

from mrctprep.imaging.bias import FIELD_PRECISION
from mrctprep.interfaces.bids import DerivativesDataSink
from mrctprep.workflows.literate import LiterateWorkflow

#: A node's output: its name, or ``(name, function, argument)`` to pass it through a function.
Field = str | tuple[str, Any, Any]

#: Sidecar fields of a derivative on FSL's MNI152 grid.
MNI_GRID = {
    'Resolution': "1 mm isotropic on the 182x218x182 grid of FSL's MNI152 (LAS voxel order; "
    'world box x -91..90, y -126..91, z -72..109 mm), the geometry IGUANe was trained on',
}
_NOT_STRIPPED = {'SkullStripped': False}
#: ``precision`` 0: int16 at the finest step the image's range allows, range / 65534, so
#: every value is kept to within 1/131068 of the range: below MR noise by orders of
#: magnitude and far below one step of an integer-valued scan. Half the disk of float32.
_FINEST_INT16 = 0.0
_STRIPPED = {'SkullStripped': True}


@dataclass(frozen=True)
class Output:
    """One derivative: its sink's name, BIDS entities and sidecar, and where its file comes
    from (``in_file``: node name and output) and its computed sidecar fields (``meta_dict``)."""

    name: str
    in_file: tuple[str, Field]
    entities: Mapping[str, Any]
    suffix: str | None = None
    datatype: str = 'anat'
    dtype: str | None = None
    #: Store a smooth float map as int16 at this step (see ``DerivativesDataSink``).
    precision: float | None = None
    static_meta: Mapping[str, Any] = field(default_factory=dict)
    meta_dict: tuple[str, Field] | None = None


def add_outputs(
    workflow: LiterateWorkflow,
    outputs: Sequence[Output],
    *,
    output_dir: str | Path,
    source_files: Sequence[str] | None = None,
) -> dict[str, pe.Node]:
    """A sink per output in ``workflow``, named after it; returns them by name.

    The raw file(s) each output derives from come from ``source_files`` or, when None, from
    the workflow's ``inputnode.source_file``. Sinks only copy and rename, so they run in the
    main process instead of waiting for a worker.
    """
    sinks = {}
    for output in outputs:
        inputs = {
            key: value
            for key, value in (
                ('suffix', output.suffix),
                ('dtype', output.dtype),
                ('precision', output.precision),
            )
            if value is not None
        }
        sink = pe.Node(
            DerivativesDataSink(
                base_directory=str(output_dir),
                entities=dict(output.entities),
                datatype=output.datatype,
                static_meta=dict(output.static_meta),
                **inputs,
            ),
            name=output.name,
            run_without_submitting=True,
        )
        if source_files is None:
            workflow.connect(workflow.get_node('inputnode'), 'source_file', sink, 'source_file')
        else:
            sink.inputs.source_file = list(source_files)
        for target, origin in (('in_file', output.in_file), ('meta_dict', output.meta_dict)):
            if origin is not None:
                workflow.connect(workflow.get_node(origin[0]), origin[1], sink, target)
        sinks[output.name] = sink
    return sinks


def init_ds_reorient(
    workflow: LiterateWorkflow, *, output_dir: str | Path, is_ct: bool
) -> dict[str, pe.Node]:
    """``desc-reorient`` image (+ sidecar with the original grid) and its figure."""
    entities = {'desc': 'reorient'}
    return add_outputs(
        workflow,
        [
            Output(
                'ds_reorient',
                ('reorient', 'out_file'),
                entities,
                static_meta={} if is_ct else _NOT_STRIPPED,
                meta_dict=('reorient', 'metadata'),
            ),
            Output(
                'ds_report_reorient', ('plot_reorient', 'out_report'), entities, datatype='figures'
            ),
        ],
        output_dir=output_dir,
    )


def init_ds_ct_ingest(
    workflow: LiterateWorkflow, *, output_dir: str | Path, acquisition: Mapping[str, Any]
) -> dict[str, pe.Node]:
    """``desc-preproc`` CT (int16 HU; the raw sidecar's acquisition facts kept) and figure."""
    entities = {'desc': 'preproc'}
    return add_outputs(
        workflow,
        [
            Output(
                'ds_conform',
                ('conform_ct_wf', 'outputnode.out_file'),
                entities,
                dtype='int16',
                static_meta=acquisition,
                meta_dict=('conform_ct_wf', 'outputnode.metadata'),
            ),
            Output(
                'ds_report_conform', ('plot_conform', 'out_report'), entities, datatype='figures'
            ),
        ],
        output_dir=output_dir,
    )


# Longer than most: a table of eleven outputs, one record each.
def init_ds_mr_preproc(
    workflow: LiterateWorkflow, *, output_dir: str | Path, space: str
) -> dict[str, pe.Node]:
    """mr-preproc's eleven outputs: native T1w, mask, bias field, transforms, MNI-grid T1w,
    mask and model input, and the mask and registration figures."""
    mni = {'space': space, 'res': '1'}
    image_to_template = {'from': 'T1w', 'to': space, 'mode': 'image'}
    flirt = {'Format': 'FSL FLIRT matrix; reference: FSL MNI152 1 mm grid'}
    outputs = [
        Output(
            'ds_t1w',
            ('n4', 'out_file'),
            {'desc': 'preproc'},
            precision=_FINEST_INT16,
            static_meta=_NOT_STRIPPED,
            meta_dict=('t1w_metadata', 'out'),
        ),
        Output(
            'ds_mask',
            ('skull_strip', 'out_mask'),
            {'desc': 'brain'},
            suffix='mask',
            dtype='uint8',
            meta_dict=('skull_strip', 'metadata'),
        ),
        Output(
            'ds_bias',
            ('n4', 'bias_field'),
            {'desc': 'biasfield'},
            precision=FIELD_PRECISION,
            static_meta=_NOT_STRIPPED,
            meta_dict=('n4', 'metadata'),
        ),
        Output(
            'ds_xfm',
            ('register', 'transform'),
            image_to_template,
            suffix='xfm',
            meta_dict=('register', 'metadata'),
        ),
        Output(
            'ds_xfm_inverse',
            ('register', 'inverse_transform'),
            {'from': space, 'to': 'T1w', 'mode': 'image'},
            suffix='xfm',
        ),
        Output(
            'ds_flirt',
            ('register', 'flirt_matrix'),
            {**image_to_template, 'desc': 'flirt'},
            suffix='xfm',
            static_meta=flirt,
        ),
        Output(
            'ds_mni_t1w',
            ('resample_t1w', 'out_file'),
            {**mni, 'desc': 'preproc'},
            precision=_FINEST_INT16,
            static_meta={**_NOT_STRIPPED, **MNI_GRID},
            meta_dict=('register', 'metadata'),
        ),
        Output(
            'ds_mni_mask',
            ('resample_mask', 'out_file'),
            {**mni, 'desc': 'brain'},
            suffix='mask',
            dtype='uint8',
            static_meta={'Type': 'Brain', **MNI_GRID},
        ),
        Output(
            'ds_model_input',
            ('crop', 'out_file'),
            {**mni, 'desc': 'norm'},
            static_meta={**_STRIPPED, **MNI_GRID},
            meta_dict=('crop', 'metadata'),
        ),
        Output(
            'ds_report_mask',
            ('plot_mask', 'out_report'),
            {'desc': 'brainmask'},
            datatype='figures',
        ),
        Output(
            'ds_report_registration',
            ('plot_registration', 'out_report'),
            {'space': space},
            datatype='figures',
        ),
    ]
    return add_outputs(workflow, outputs, output_dir=output_dir)


def init_ds_mr_harmonize(
    workflow: LiterateWorkflow, *, output_dir: str | Path, space: str
) -> dict[str, pe.Node]:
    """The harmonized T1w on the model grid and on the native grid, and their figure."""
    native = {'Resolution': 'native grid of the T1w (RAS+), resampled from the model grid'}
    outputs = [
        Output(
            'ds_harmonized_mni',
            ('harmonize', 'out_file'),
            {'space': space, 'res': '1', 'desc': 'harmonized'},
            static_meta={**_STRIPPED, **MNI_GRID},
            meta_dict=('harmonize', 'metadata'),
        ),
        Output(
            'ds_harmonized',
            ('harmonized_to_native', 'out_file'),
            {'desc': 'harmonized'},
            static_meta={**_STRIPPED, **native},
            meta_dict=('harmonize', 'metadata'),
        ),
        Output(
            'ds_report_harmonized',
            ('plot_harmonized', 'out_report'),
            {'desc': 'harmonized'},
            datatype='figures',
        ),
    ]
    return add_outputs(workflow, outputs, output_dir=output_dir)


def select(items: list, index: int) -> object:
    """``items[index]``: a connection function.

    nipype copies its source into the graph and runs it without this module's imports, so
    its annotations may name builtins only.
    """
    return items[index]


def init_ds_drr(
    workflow: LiterateWorkflow, *, output_dir: str | Path, labels: Sequence[str]
) -> dict[str, pe.Node]:
    """Per view a float32 NIfTI and a 16-bit PNG (sharing one name and so one sidecar), and
    the contact sheet. One sink per view and file type, so that the log names each view."""
    outputs = [
        Output('ds_report_drr', ('plot_views', 'out_report'), {'desc': 'drr'}, datatype='figures')
    ]
    for index, label in enumerate(labels):
        for kind, files, dtype in (('nii', 'out_files', 'float32'), ('png', 'png_files', None)):
            outputs.append(
                Output(
                    f'ds_drr_{label}_{kind}',
                    ('render', (files, select, index)),
                    {'desc': label},
                    suffix='drr',
                    dtype=dtype,
                    meta_dict=('render', ('metadata', select, index)),
                )
            )
    return add_outputs(workflow, outputs, output_dir=output_dir)


def init_ds_superres(
    workflow: LiterateWorkflow,
    *,
    output_dir: str | Path,
    channel: str,
    index: int,
    source_files: Sequence[str],
    entities: Mapping[str, Any],
    resolution: str,
) -> dict[str, pe.Node]:
    """One channel's super-resolved image (its ``res-`` in ``entities``) and its figure."""
    figure_entities = {key: value for key, value in entities.items() if key != 'res'}
    outputs = [
        Output(
            f'ds_superres_{channel}',
            ('superres', ('out_files', select, index)),
            entities,
            dtype='float32',
            static_meta={'Resolution': resolution},
            meta_dict=('superres', ('metadata', select, index)),
        ),
        Output(
            f'ds_report_superres_{channel}',
            (f'plot_superres_{channel}', 'out_report'),
            figure_entities,
            datatype='figures',
        ),
    ]
    return add_outputs(workflow, outputs, output_dir=output_dir, source_files=source_files)


def init_ds_sim2real(
    workflow: LiterateWorkflow, *, output_dir: str | Path, labels: Sequence[str]
) -> dict[str, pe.Node]:
    """Per view the sim2real image as float32 NIfTI and 16-bit PNG (``desc-<view>sim2real``,
    one sidecar), and the DRR | sim2real sheet."""
    outputs = [
        Output(
            'ds_report_sim2real',
            ('plot_sim2real', 'out_report'),
            {'desc': 'sim2real'},
            suffix='drr',
            datatype='figures',
        )
    ]
    for index, label in enumerate(labels):
        for kind, files, dtype in (('nii', 'out_files', 'float32'), ('png', 'png_files', None)):
            outputs.append(
                Output(
                    f'ds_sim2real_{label}_{kind}',
                    ('sim2real', (files, select, index)),
                    {'desc': f'{label}sim2real'},
                    suffix='drr',
                    dtype=dtype,
                    meta_dict=('sim2real', ('metadata', select, index)),
                )
            )
    return add_outputs(workflow, outputs, output_dir=output_dir)


def init_ds_organ_seg(
    workflow: LiterateWorkflow, *, output_dir: str | Path, dicom_seg: bool = False
) -> dict[str, pe.Node]:
    """``seg-organs`` label map (uint8) with its sidecar, the per-organ table, the figure; and
    the DICOM SEG where the CT came from a DICOM series."""
    entities = {'segmentation': 'organs'}
    outputs = [
        Output(
            'ds_organs_dseg',
            ('segment', 'out_file'),
            entities,
            suffix='dseg',
            dtype='uint8',
            meta_dict=('segment', 'metadata'),
        ),
        Output('ds_organs_volumes', ('measure', 'out_file'), entities, suffix='volumes'),
        Output(
            'ds_report_organs',
            ('plot_organs', 'out_report'),
            {'desc': 'organs'},
            suffix='dseg',
            datatype='figures',
        ),
    ]
    if dicom_seg:
        outputs.append(Output('ds_organs_dicom_seg', ('dicom_seg', 'out_file'), entities, 'dseg'))
    return add_outputs(workflow, outputs, output_dir=output_dir)


def init_ds_ct_harmonize(
    workflow: LiterateWorkflow, *, output_dir: str | Path, with_std: bool
) -> dict[str, pe.Node]:
    """The harmonized CT (int16 HU) with its sidecar, the samples' SD, the figure."""
    outputs = [
        Output(
            'ds_ct_harmonized',
            ('harmonize', 'out_file'),
            {'desc': 'harmonized'},
            suffix='ct',
            dtype='int16',
            meta_dict=('harmonize', 'metadata'),
        ),
        Output(
            'ds_report_ct_harmonize',
            ('plot', 'out_report'),
            {'desc': 'ctharmonize'},
            suffix='ct',
            datatype='figures',
        ),
    ]
    if with_std:
        outputs.append(
            Output(
                'ds_ct_harmonized_std',
                ('harmonize', 'std_file'),
                {'desc': 'harmonizedstd'},
                suffix='ct',
                dtype='float32',
                static_meta={'Units': 'HU', 'Description': 'SD of the CTFlow samples'},
            )
        )
    return add_outputs(workflow, outputs, output_dir=output_dir)
