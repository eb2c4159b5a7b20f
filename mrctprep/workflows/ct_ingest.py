"""The ``ct-ingest`` pipeline: each CT checked and conformed to int16 HU in RAS+, with QC."""

from __future__ import annotations

from functools import partial

import nibabel as nb
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import SubjectData, read_sidecar
from mrctprep.core.config import RunConfig
from mrctprep.imaging.dicom_series import ACQUISITION_KEYS
from mrctprep.imaging.hounsfield import PADDING_FILL_HU
from mrctprep.interfaces.ct import ConformCT
from mrctprep.interfaces.reports import CTWindowsRPT
from mrctprep.workflows.images import init_per_image_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.outputs import derivatives_sink

#: The queries (``--bids-filter-file`` names) whose images this pipeline conforms.
CT_INGEST_INPUTS = ('ct',)


def init_ct_ingest_wf(
    *, subject_data: SubjectData, config: RunConfig, name: str = 'ct_ingest_wf'
) -> LiterateWorkflow:
    """Conform every CT of a subject, one sub-workflow per image."""
    return init_per_image_wf(
        subject_data=subject_data,
        queries=CT_INGEST_INPUTS,
        init_image_wf=partial(init_ct_conform_wf, output_dir=str(config.output_dir)),
        prefix='ct_conform',
        name=name,
    )


def init_ct_conform_wf(
    *, source_file: str, output_dir: str, name: str = 'ct_conform_wf'
) -> LiterateWorkflow:
    """Check one CT is in HU, conform it, and write it with a four-window QC figure.

    Outputs: ``sub-<l>[_ses-<l>]_desc-preproc_ct.nii.gz`` (int16 HU, RAS+; the sidecar says
    ``Units: "HU"``, what was changed, and carries the raw sidecar's acquisition facts) and
    ``figures/sub-<l>_desc-preproc_ct.svg``.
    """
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = (
        'Each CT image was checked to be in Hounsfield units (air near -1000 HU; a volume '
        'stored as HU + 1024 was shifted back, any other scale refused), voxels outside the '
        f'reconstruction circle (padding) were set to {PADDING_FILL_HU:g} HU, and the image '
        'was stored as 16-bit integers with its voxel axes reordered to RAS+ without '
        f'resampling (nibabel {nb.__version__}).\n'
    )
    # The raw sidecar is read here, once: it is small, and its facts belong in the outputs.
    raw_sidecar = read_sidecar(source_file)
    acquisition = {key: raw_sidecar[key] for key in ACQUISITION_KEYS if key in raw_sidecar}

    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    inputnode.inputs.source_file = source_file
    outputnode = pe.Node(niu.IdentityInterface(fields=['out_file']), name='outputnode')

    conform = pe.Node(ConformCT(), name='conform')
    if raw_sidecar.get('PixelPaddingValue') is not None:
        conform.inputs.padding_value = float(raw_sidecar['PixelPaddingValue'])
    plot_conform = pe.Node(
        CTWindowsRPT(title=f'{source_file.rsplit("/", 1)[-1]}: HU, RAS+'), name='plot_conform'
    )
    ds_conform = derivatives_sink(
        'ds_conform',
        output_dir,
        entities={'desc': 'preproc'},
        dtype='int16',
        static_meta=acquisition,
    )
    ds_report_conform = derivatives_sink(
        'ds_report_conform', output_dir, entities={'desc': 'preproc'}, datatype='figures'
    )

    # fmt: off
    workflow.connect([
        (inputnode, conform, [('source_file', 'in_file')]),
        (inputnode, ds_conform, [('source_file', 'source_file')]),
        (inputnode, ds_report_conform, [('source_file', 'source_file')]),
        (conform, ds_conform, [('out_file', 'in_file'), ('metadata', 'meta_dict')]),
        (conform, plot_conform, [('out_file', 'in_file')]),
        (plot_conform, ds_report_conform, [('out_report', 'in_file')]),
        (ds_conform, outputnode, [('out_file', 'out_file')]),
    ])
    # fmt: on
    return workflow
