"""The ``reorient`` pipeline: an anatomical image to RAS+ voxel order, with a QC figure."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.imaging.figures import CT_WINDOWS
from mrctprep.interfaces.reorient import Reorient
from mrctprep.interfaces.reports import OrthogonalSlicesRPT
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.outputs import init_ds_reorient


def init_reorient_wf(
    *, source_file: str, output_dir: str | Path, name: str = 'reorient_wf'
) -> LiterateWorkflow:
    """Reorient one image to RAS+ and write it, its sidecar and a three-plane QC figure.

    Outputs: ``sub-<l>[_ses-<l>]_desc-reorient_<suffix>.nii.gz`` (+ ``.json`` with the
    original orientation, shape, affine and voxel mapping) and
    ``figures/sub-<l>_desc-reorient_<suffix>.svg``.
    """
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = (
        'Each anatomical image was reoriented to RAS+ voxel order by permuting and flipping '
        f'its voxel axes (nibabel {nb.__version__}), without resampling, so that world '
        'coordinates and voxel values are unchanged.\n'
    )
    is_ct = source_file.rsplit('_', 1)[-1].split('.')[0] == 'ct'

    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    inputnode.inputs.source_file = source_file
    outputnode = pe.Node(niu.IdentityInterface(fields=['out_file']), name='outputnode')
    reorient = pe.Node(Reorient(), name='reorient')
    plot_reorient = pe.Node(
        OrthogonalSlicesRPT(title=f'{source_file.rsplit("/", 1)[-1]} in RAS+'),
        name='plot_reorient',
    )
    if is_ct:
        plot_reorient.inputs.window = CT_WINDOWS['soft-tissue']

    # fmt: off
    workflow.connect([
        (inputnode, reorient, [('source_file', 'in_file')]),
        (reorient, plot_reorient, [('out_file', 'in_file')]),
    ])
    # fmt: on
    sinks = init_ds_reorient(workflow, output_dir=output_dir, is_ct=is_ct)
    workflow.connect(sinks['ds_reorient'], 'out_file', outputnode, 'out_file')
    return workflow
