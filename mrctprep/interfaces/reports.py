"""Nipype interfaces that draw QC figures (reportlets)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Bunch,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from mrctprep.imaging.figures import (
    CT_WINDOWS,
    REGION_WINDOWS,
    body_region,
    plot_before_after,
    plot_contact_sheet,
    plot_contour_mosaic,
    plot_ct_windows,
    plot_orthogonal_slices,
    plot_registration_flicker,
)
from mrctprep.imaging.registration import RigidTransform, mni152_brain_template, resample_to_grid
from mrctprep.interfaces.base import defined_or_none, load_nifti


class ReportletInputSpec(BaseInterfaceInputSpec):
    """What every reportlet is given besides its images."""

    title = traits.Str(mandatory=True, desc='figure title')


class ReportletOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc='the figure (SVG, or PNG for a contact sheet)')


class ReportletInterface(SimpleInterface, ABC):
    """A figure drawn into the node's working directory: subclasses say only what they draw.

    ``_report_name`` is the figure's file name (nipype's cache keeps it, so it must not
    change); its extension sets the format the figure is saved in.
    """

    output_spec = ReportletOutputSpec
    _report_name: ClassVar[str]

    def _run_interface(self, runtime: Bunch) -> Bunch:
        out_report = os.path.join(runtime.cwd, self._report_name)
        self._plot(out_report)
        self._results['out_report'] = out_report
        return runtime

    @abstractmethod
    def _plot(self, out_report: str) -> None:
        """Draw the figure into ``out_report``."""


class _OrthogonalSlicesInputSpec(ReportletInputSpec):
    in_file = File(exists=True, mandatory=True, desc='an RAS+ image')
    window = traits.Tuple(
        traits.Float, traits.Float, desc='(level, width) display window; default percentiles'
    )


class OrthogonalSlicesRPT(ReportletInterface):
    """Sagittal, coronal and axial planes of an image, as an SVG figure."""

    input_spec = _OrthogonalSlicesInputSpec
    _report_name = 'orthogonal_slices.svg'

    def _plot(self, out_report: str) -> None:
        plot_orthogonal_slices(
            load_nifti(self.inputs.in_file),
            out_report,
            title=self.inputs.title,
            window=defined_or_none(self.inputs.window),
        )


class _BeforeAfterInputSpec(ReportletInputSpec):
    before_file = File(exists=True, mandatory=True, desc='image shown in the top row')
    after_file = File(exists=True, mandatory=True, desc='image on the same RAS+ grid, below')
    labels = traits.Tuple(
        ('before', 'after'), traits.Str, traits.Str, usedefault=True, desc='row labels'
    )


class BeforeAfterRPT(ReportletInterface):
    """The same three planes of two images on one grid, one above the other, as SVG."""

    input_spec = _BeforeAfterInputSpec
    _report_name = 'before_after.svg'

    def _plot(self, out_report: str) -> None:
        plot_before_after(
            load_nifti(self.inputs.before_file),
            load_nifti(self.inputs.after_file),
            out_report,
            title=self.inputs.title,
            labels=tuple(self.inputs.labels),
        )


class _CTWindowsInputSpec(ReportletInputSpec):
    in_file = File(exists=True, mandatory=True, desc='a CT in HU, RAS+')
    body_part = traits.Str(desc='DICOM BodyPartExamined; default: found from the image')


class CTWindowsRPT(ReportletInterface):
    """Three planes of a CT in the windows that fit its body region (head: brain and bone;
    chest: soft tissue, lung and bone; elsewhere: soft tissue and bone), as SVG."""

    input_spec = _CTWindowsInputSpec
    _report_name = 'ct_windows.svg'

    def _plot(self, out_report: str) -> None:
        img = load_nifti(self.inputs.in_file)
        region = body_region(
            np.asanyarray(img.dataobj, dtype=np.float32),
            img.header.get_zooms()[:3],
            defined_or_none(self.inputs.body_part),
        )
        windows = {name: CT_WINDOWS[name] for name in REGION_WINDOWS[region]}
        plot_ct_windows(img, out_report, title=f'{self.inputs.title} ({region})', windows=windows)


class _ContourMosaicInputSpec(ReportletInputSpec):
    in_file = File(exists=True, mandatory=True, desc='background image')
    contour_file = File(exists=True, mandatory=True, desc='image whose contour is drawn')
    level = traits.Float(0.5, usedefault=True, desc='contour level')


class ContourMosaicRPT(ReportletInterface):
    """Six cuts per axis with a contour over them, e.g. the brain mask over the T1w, as SVG."""

    input_spec = _ContourMosaicInputSpec
    _report_name = 'contour_mosaic.svg'

    def _plot(self, out_report: str) -> None:
        plot_contour_mosaic(
            load_nifti(self.inputs.in_file),
            load_nifti(self.inputs.contour_file),
            out_report,
            title=self.inputs.title,
            level=self.inputs.level,
        )


class _RegistrationInputSpec(ReportletInputSpec):
    in_file = File(exists=True, mandatory=True, desc='registered brain on the MNI grid')
    template_file = File(exists=True, desc='template (default: nilearn ICBM 2009a sym)')


class RegistrationRPT(ReportletInterface):
    """The registered brain flickering against the template, its edges over both, as SVG."""

    input_spec = _RegistrationInputSpec
    _report_name = 'registration.svg'

    def _plot(self, out_report: str) -> None:
        registered = load_nifti(self.inputs.in_file)
        template_file = defined_or_none(self.inputs.template_file)
        template = load_nifti(template_file) if template_file else mni152_brain_template()
        # The image is already on the template's grid: resampling only matches the grids.
        on_grid = resample_to_grid(template, registered, RigidTransform(np.eye(4)))
        plot_registration_flicker(registered, on_grid, out_report, title=self.inputs.title)


class _ContactSheetInputSpec(ReportletInputSpec):
    in_files = traits.List(
        File(exists=True), mandatory=True, desc='2D NIfTIs stored as (column, row), row 0 on top'
    )
    labels = traits.List(traits.Str, mandatory=True, desc='one caption per image')


class ContactSheetRPT(ReportletInterface):
    """All views of a DRR run side by side, as one PNG."""

    input_spec = _ContactSheetInputSpec
    _report_name = 'contact_sheet.png'

    def _plot(self, out_report: str) -> None:
        # Transposed back to (row, column), the order images are drawn in.
        images = [
            np.asanyarray(load_nifti(path).dataobj, dtype=np.float32).T
            for path in self.inputs.in_files
        ]
        plot_contact_sheet(images, list(self.inputs.labels), out_report, title=self.inputs.title)
