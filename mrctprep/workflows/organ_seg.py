"""The ``organ-seg`` pipeline: liver, kidneys, spleen and pancreas on each CT (EfficientSCN)."""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import dicom_source_files
from mrctprep.core.config import ExecutionOptions, ModelOptions
from mrctprep.imaging.dicom_seg import unreferable
from mrctprep.interfaces.organs import (
    DicomSegmentation,
    LabelTableSink,
    OrgansRPT,
    OrganTable,
    SegmentOrgans,
)
from mrctprep.models.efficientscn import LOCALIZATION_MODEL, SEGMENTATION_MODEL
from mrctprep.models.weights import ModelWeights, resolve_weights
from mrctprep.workflows.ct_conform import init_conform_ct_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.nodes import torch_node
from mrctprep.workflows.outputs import init_ds_organ_seg

LOGGER = logging.getLogger(__name__)


def organ_weights(models: ModelOptions, output_dir: Path) -> tuple[ModelWeights, ModelWeights]:
    """Both stages' weights, resolved and checked when the graph is built: a missing file
    stops the run before anything runs (exit 126, saying what to import or train)."""
    found = []
    for model in (LOCALIZATION_MODEL, SEGMENTATION_MODEL):
        given = models.weights.get(model)
        found.append(
            resolve_weights(model, explicit=Path(given) if given else None, output_dir=output_dir)
        )
    return found[0], found[1]


def init_organ_seg_wf(
    *,
    source_file: str,
    output_dir: str | Path,
    models: ModelOptions,
    execution: ExecutionOptions,
    name: str = 'organ_seg_wf',
) -> LiterateWorkflow:
    """Conform one CT (as ct-ingest does), box its organs, segment them, measure them.

    Outputs (``sub-<l>/anat/``): ``sub-<l>_seg-organs_dseg.nii.gz`` (uint8 on the conformed
    CT's grid: 1 liver, 2 kidneys, 3 spleen, 4 pancreas; sidecar with ``LocalizationBox``
    in world mm RAS+ and both weights' SHA-256), ``sub-<l>_seg-organs_volumes.tsv`` (volume
    in ml, mean and median HU, field-of-view edge flag per organ), the label table
    ``seg-organs_dseg.tsv`` at the dataset root, and ``figures/sub-<l>_desc-organs_dseg.svg``.
    A CT that ``mrctprep import`` converted from a DICOM series still in ``sourcedata/`` also
    gets ``sub-<l>_seg-organs_dseg.dcm``, a DICOM SEG referencing that series.
    """
    localization, segmentation = organ_weights(models, Path(output_dir))
    workflow = LiterateWorkflow(name=name)
    workflow.__desc__ = (
        'Liver, kidneys, spleen and pancreas were segmented with EfficientSCN (Thaler et al., '
        "2021): a constant-width 3D U-Net found the organs' bounding box on the whole CT at "
        '6 mm, and a SpatialConfiguration-Net segmented the box (enlarged by 10 mm) at 2 mm; '
        'labels were resampled linearly as probabilities onto the CT grid '
        f'(localization weights SHA-256 {localization.sha256[:12]}..., segmentation weights '
        f'SHA-256 {segmentation.sha256[:12]}...).\n'
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    inputnode.inputs.source_file = source_file
    conform_ct_wf = init_conform_ct_wf(source_file=source_file)
    segment = torch_node(
        SegmentOrgans,
        name='segment',
        execution=execution,
        mem_gb=2,
        localization_weights=str(localization.path),
        localization_sha256=localization.sha256,
        scn_weights=str(segmentation.path),
        scn_sha256=segmentation.sha256,
    )
    trained_spacing = segmentation.card.get('trained', {}).get('SpacingMM')
    if trained_spacing:  # a CPU-sized SCN runs at the (coarser) spacing it was trained at
        segment.inputs.scn_spacing = float(max(trained_spacing))
    measure = pe.Node(OrganTable(), name='measure')
    plot_organs = pe.Node(
        OrgansRPT(title=f'{source_file.rsplit("/", 1)[-1]}: organs'), name='plot_organs'
    )
    label_table = pe.Node(
        LabelTableSink(base_directory=str(output_dir)),
        name='label_table',
        run_without_submitting=True,
    )
    # fmt: off
    workflow.connect([
        (inputnode, conform_ct_wf, [('source_file', 'inputnode.source_file')]),
        (conform_ct_wf, segment, [('outputnode.out_file', 'in_file')]),
        (conform_ct_wf, measure, [('outputnode.out_file', 'in_file')]),
        (segment, measure, [('out_file', 'dseg_file')]),
        (conform_ct_wf, plot_organs, [('outputnode.out_file', 'in_file')]),
        (segment, plot_organs, [('out_file', 'dseg_file')]),
    ])
    # fmt: on
    dicom_files = _referable_dicom_source(source_file)
    if dicom_files:
        dicom_seg = pe.Node(DicomSegmentation(source_files=dicom_files), name='dicom_seg')
        workflow.connect(segment, 'out_file', dicom_seg, 'dseg_file')
    sinks = init_ds_organ_seg(workflow, output_dir=output_dir, dicom_seg=bool(dicom_files))
    workflow.connect(sinks['ds_organs_dseg'], 'out_file', label_table, 'dseg_file')
    return workflow


def _referable_dicom_source(source_file: str) -> list[str]:
    """The DICOM series a DICOM SEG of this CT can reference; [] (with a warning saying why
    where the CT came from DICOM) when there is none."""
    files = dicom_source_files(source_file)
    reason = unreferable(files) if files else None
    if reason:
        LOGGER.warning('no DICOM SEG for %s: %s', source_file, reason)
        return []
    return [str(f) for f in files]
