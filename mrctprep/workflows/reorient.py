"""The ``reorient`` pipeline: anatomical images to RAS+ voxel order, with a QC figure."""

from __future__ import annotations

from functools import partial

import nibabel as nb
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import SubjectData
from mrctprep.core.config import RunConfig
from mrctprep.imaging.figures import CT_WINDOWS
from mrctprep.interfaces.reorient import Reorient
from mrctprep.interfaces.reports import OrthogonalSlicesRPT
from mrctprep.workflows.images import init_per_image_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.outputs import derivatives_sink

#: The queries (``--bids-filter-file`` names) whose images this pipeline reorients.
REORIENT_INPUTS = ('t1w', 't2w', 'flair', 'pdw', 'ct')


def init_reorient_wf(
    *, subject_data: SubjectData, config: RunConfig, name: str = 'reorient_wf'
) -> LiterateWorkflow:
    """Reorient every anatomical image of a subject, one sub-workflow per image."""
    return init_per_image_wf(
        subject_data=subject_data,
        queries=REORIENT_INPUTS,
        init_image_wf=partial(init_reorient_image_wf, output_dir=str(config.output_dir)),
        prefix='reorient',
        name=name,
    )


def init_reorient_image_wf(
    *, source_file: str, output_dir: str, name: str = 'reorient_image_wf'
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
    suffix = source_file.rsplit('_', 1)[-1].split('.')[0]
    is_ct = suffix == 'ct'

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

    ds_reorient = derivatives_sink(
        'ds_reorient',
        output_dir,
        entities={'desc': 'reorient'},
        static_meta={} if is_ct else {'SkullStripped': False},
    )
    ds_report_reorient = derivatives_sink(
        'ds_report_reorient', output_dir, entities={'desc': 'reorient'}, datatype='figures'
    )

    # fmt: off
    workflow.connect([
        (inputnode, reorient, [('source_file', 'in_file')]),
        (inputnode, ds_reorient, [('source_file', 'source_file')]),
        (inputnode, ds_report_reorient, [('source_file', 'source_file')]),
        (reorient, ds_reorient, [('out_file', 'in_file'), ('metadata', 'meta_dict')]),
        (reorient, plot_reorient, [('out_file', 'in_file')]),
        (plot_reorient, ds_report_reorient, [('out_report', 'in_file')]),
        (ds_reorient, outputnode, [('out_file', 'out_file')]),
    ])
    # fmt: on
    return workflow
