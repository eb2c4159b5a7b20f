"""The ``ct-ingest`` pipeline: a CT checked and conformed to int16 HU in RAS+, with QC."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import read_sidecar
from mrctprep.imaging.dicom_series import ACQUISITION_KEYS
from mrctprep.imaging.hounsfield import PADDING_FILL_HU
from mrctprep.interfaces.reports import CTWindowsRPT
from mrctprep.workflows.ct_conform import init_conform_ct_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.outputs import init_ds_ct_ingest


def init_ct_ingest_wf(
    *, source_file: str, output_dir: str | Path, name: str = 'ct_ingest_wf'
) -> LiterateWorkflow:
    """Check one CT is in HU, conform it, and write it with a QC figure in the windows that
    fit its body part.

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
    raw_sidecar = read_sidecar(source_file)
    acquisition = {key: raw_sidecar[key] for key in ACQUISITION_KEYS if key in raw_sidecar}

    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    inputnode.inputs.source_file = source_file
    outputnode = pe.Node(niu.IdentityInterface(fields=['out_file']), name='outputnode')
    conform_ct_wf = init_conform_ct_wf(source_file=source_file)
    plot_conform = pe.Node(
        CTWindowsRPT(title=f'{source_file.rsplit("/", 1)[-1]}: HU, RAS+'), name='plot_conform'
    )
    if raw_sidecar.get('BodyPartExamined'):
        plot_conform.inputs.body_part = str(raw_sidecar['BodyPartExamined'])
    # fmt: off
    workflow.connect([
        (inputnode, conform_ct_wf, [('source_file', 'inputnode.source_file')]),
        (conform_ct_wf, plot_conform, [('outputnode.out_file', 'in_file')]),
    ])
    # fmt: on
    sinks = init_ds_ct_ingest(workflow, output_dir=output_dir, acquisition=acquisition)
    workflow.connect(sinks['ds_conform'], 'out_file', outputnode, 'out_file')
    return workflow
