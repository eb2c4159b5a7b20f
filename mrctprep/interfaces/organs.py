"""Nipype interfaces of the organ-seg pipeline: EfficientSCN, the organ table, the QC figure,
the DICOM SEG."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Bunch,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from mrctprep import __version__
from mrctprep.core.derivatives import write_text_atomically
from mrctprep.core.devices import configure_torch_cpu
from mrctprep.imaging.dicom_seg import read_source_series, segmentation_of
from mrctprep.imaging.organs import (
    FLARE_ORGANS,
    dseg_table,
    measures_table,
    organ_measures,
    plot_organ_contours,
)
from mrctprep.interfaces.base import ImageMetadataOutputSpec, TorchInputSpec, load_nifti
from mrctprep.interfaces.reports import ReportletInputSpec, ReportletInterface


class _SegmentOrgansInputSpec(TorchInputSpec):
    in_file = File(exists=True, mandatory=True, desc='CT in HU (ct-ingest conformed)')
    localization_weights = File(exists=True, mandatory=True, desc='verified stage-1 weights')
    localization_sha256 = traits.Str(mandatory=True, desc='their SHA-256, from the card')
    scn_weights = File(exists=True, mandatory=True, desc='verified stage-2 (SCN) weights')
    scn_sha256 = traits.Str(mandatory=True, desc='their SHA-256, from the card')
    scn_spacing = traits.Float(desc="the SCN grid's spacing its weights were trained at (mm)")


class SegmentOrgans(SimpleInterface):
    """EfficientSCN on one CT: the organ box at 6 mm, the SCN in the box at 2 mm, labels back
    on the CT's grid. Out: uint8 FLARE labels and the sidecar fields (the box in world mm,
    the weights' SHA-256, the SCN's spacing and size, the device)."""

    input_spec = _SegmentOrgansInputSpec
    output_spec = ImageMetadataOutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        # Deferred: torch costs seconds that building the workflow should not pay.
        from mrctprep.models.efficientscn_inference import load_organ_networks, segment_organs

        configure_torch_cpu(self.inputs.num_threads)
        ct = load_nifti(self.inputs.in_file)
        localization, scn = load_organ_networks(
            self.inputs.localization_weights, self.inputs.scn_weights, self.inputs.device
        )
        spacing = self.inputs.scn_spacing if isdefined(self.inputs.scn_spacing) else None
        result = segment_organs(ct, localization, scn, self.inputs.device, scn_spacing=spacing)
        out_file = os.path.join(runtime.cwd, 'organs_dseg.nii.gz')
        labels = nb.Nifti1Image(result.labels, ct.affine, ct.header)
        labels.set_data_dtype(np.uint8)
        labels.header.set_slope_inter(1, 0)
        labels.to_filename(out_file)
        self._results['out_file'] = out_file
        self._results['metadata'] = {
            'LocalizationBox': {
                'MinRAS': [round(v, 2) for v in result.box_min_ras],
                'MaxRAS': [round(v, 2) for v in result.box_max_ras],
            },
            'Method': 'EfficientSCN (Thaler et al., 2021): localization at 6 mm, '
            'SpatialConfiguration-Net in the box',
            'SegmentationSpacingMM': round(result.scn_spacing_mm, 4),
            'SegmentationGridSize': list(result.scn_size),
            'LocalizationWeightsSHA256': self.inputs.localization_sha256,
            'SegmentationWeightsSHA256': self.inputs.scn_sha256,
            'Device': self.inputs.device,
        }
        return runtime


class _OrganTableInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc='CT in HU')
    dseg_file = File(exists=True, mandatory=True, desc='its organ labels')


class _OrganTableOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='TSV: per organ volume (ml), mean/median HU, edge flag')


class OrganTable(SimpleInterface):
    """Per organ: volume in ml, mean and median HU, and whether it touches the scan's edge."""

    input_spec = _OrganTableInputSpec
    output_spec = _OrganTableOutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        ct = load_nifti(self.inputs.in_file)
        labels = np.asanyarray(load_nifti(self.inputs.dseg_file).dataobj).astype(np.uint8)
        hu = np.asanyarray(ct.dataobj, dtype=np.float32)
        measures = organ_measures(labels, hu, ct.header.get_zooms())
        out_file = os.path.join(runtime.cwd, 'organs.tsv')
        with open(out_file, 'w') as stream:
            stream.write(measures_table(measures))
        self._results['out_file'] = out_file
        return runtime


class _OrgansInputSpec(ReportletInputSpec):
    in_file = File(exists=True, mandatory=True, desc='CT in HU (RAS+)')
    dseg_file = File(exists=True, mandatory=True, desc='its organ labels')


class OrgansRPT(ReportletInterface):
    """Organ contours over soft-tissue-window slices through each organ found."""

    input_spec = _OrgansInputSpec
    _report_name = 'organs.svg'

    def _plot(self, out_report: str) -> None:
        labels = np.asanyarray(load_nifti(self.inputs.dseg_file).dataobj).astype(np.uint8)
        plot_organ_contours(load_nifti(self.inputs.in_file), labels, self.inputs.title, out_report)


class _LabelTableSinkInputSpec(TraitedSpec):
    base_directory = traits.Directory(mandatory=True, desc='the derivatives dataset root')
    dseg_file = File(exists=True, mandatory=True, desc='a written label map (orders the sink)')


class _LabelTableSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='seg-organs_dseg.tsv at the dataset root')


class LabelTableSink(SimpleInterface):
    """Write the organ labels' table at the dataset root, where every subject's
    ``seg-organs_dseg.nii.gz`` inherits it (a sidecar beside each would collide with the
    label map's JSON)."""

    input_spec = _LabelTableSinkInputSpec
    output_spec = _LabelTableSinkOutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        out_file = Path(self.inputs.base_directory) / 'seg-organs_dseg.tsv'
        write_text_atomically(out_file, dseg_table())
        self._results['out_file'] = str(out_file)
        return runtime


class _DicomSegmentationInputSpec(BaseInterfaceInputSpec):
    dseg_file = File(exists=True, mandatory=True, desc='organ labels (any grid of that CT)')
    source_files = InputMultiObject(
        File(exists=True), mandatory=True, desc='the DICOM series the CT was imported from'
    )


class _DicomSegmentationOutputSpec(TraitedSpec):
    out_file = File(desc='DICOM SEG referencing the source series')


class DicomSegmentation(SimpleInterface):
    """The organ labels as a binary DICOM SEG over the CT's source series: one frame per
    source image holding an organ, one segment per organ (an organ not found, an empty one)."""

    input_spec = _DicomSegmentationInputSpec
    output_spec = _DicomSegmentationOutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        segmentation = segmentation_of(
            load_nifti(self.inputs.dseg_file),
            read_source_series([Path(f) for f in self.inputs.source_files]),
            {label: name for label, name, _, _ in FLARE_ORGANS},
            algorithm='EfficientSCN',
            version=__version__,
        )
        out_file = os.path.join(runtime.cwd, 'organs_dseg.dcm')
        segmentation.save_as(out_file)
        self._results['out_file'] = out_file
        return runtime
