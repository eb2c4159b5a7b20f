"""Nipype interfaces that draw QC figures (reportlets)."""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from mrctprep.imaging.figures import (
    plot_before_after,
    plot_contact_sheet,
    plot_contour_overlay,
    plot_ct_windows,
    plot_orthogonal_slices,
    template_edges,
)
from mrctprep.imaging.registration import RigidTransform, mni152_brain_template, resample_to_grid


class _OrthogonalSlicesInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='an RAS+ image')
    title = traits.Str(mandatory=True, desc='figure title')
    window = traits.Tuple(
        traits.Float, traits.Float, desc='(level, width) display window; default percentiles'
    )


class _ReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc='the SVG figure')


class OrthogonalSlicesRPT(SimpleInterface):
    """Sagittal, coronal and axial planes of an image, as an SVG figure."""

    input_spec = _OrthogonalSlicesInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        out_report = os.path.join(runtime.cwd, 'orthogonal_slices.svg')
        window = self.inputs.window if self.inputs.window else None
        plot_orthogonal_slices(
            nb.load(self.inputs.in_file), out_report, title=self.inputs.title, window=window
        )
        self._results['out_report'] = out_report
        return runtime


class _BeforeAfterInputSpec(BaseInterfaceInputSpec):
    before_file = File(exists=True, mandatory=True, desc='image shown in the top row')
    after_file = File(exists=True, mandatory=True, desc='image on the same RAS+ grid, below')
    title = traits.Str(mandatory=True, desc='figure title')
    labels = traits.Tuple(
        ('before', 'after'), traits.Str, traits.Str, usedefault=True, desc='row labels'
    )


class BeforeAfterRPT(SimpleInterface):
    """The same three planes of two images on one grid, one above the other, as SVG."""

    input_spec = _BeforeAfterInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        out_report = os.path.join(runtime.cwd, 'before_after.svg')
        plot_before_after(
            nb.load(self.inputs.before_file),
            nb.load(self.inputs.after_file),
            out_report,
            title=self.inputs.title,
            labels=tuple(self.inputs.labels),
        )
        self._results['out_report'] = out_report
        return runtime


class _CTWindowsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='a CT in HU, RAS+')
    title = traits.Str(mandatory=True, desc='figure title')


class CTWindowsRPT(SimpleInterface):
    """Three planes of a CT in each standard window (brain, soft tissue, lung, bone), as SVG."""

    input_spec = _CTWindowsInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        out_report = os.path.join(runtime.cwd, 'ct_windows.svg')
        plot_ct_windows(nb.load(self.inputs.in_file), out_report, title=self.inputs.title)
        self._results['out_report'] = out_report
        return runtime


class _ContourOverlayInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='background image')
    contour_file = File(exists=True, mandatory=True, desc='image whose contour is drawn')
    title = traits.Str(mandatory=True, desc='figure title')
    level = traits.Float(0.5, usedefault=True, desc='contour level')


class ContourOverlayRPT(SimpleInterface):
    """Three planes with a contour over them, e.g. the brain mask over the T1w."""

    input_spec = _ContourOverlayInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        out_report = os.path.join(runtime.cwd, 'contour_overlay.svg')
        plot_contour_overlay(
            nb.load(self.inputs.in_file),
            nb.load(self.inputs.contour_file),
            out_report,
            title=self.inputs.title,
            level=self.inputs.level,
        )
        self._results['out_report'] = out_report
        return runtime


class _RegistrationInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='registered brain on the MNI grid')
    template_file = File(exists=True, desc='template (default: nilearn ICBM 2009a sym)')
    title = traits.Str(mandatory=True, desc='figure title')


class RegistrationRPT(SimpleInterface):
    """The registered brain with the template's tissue edges over it."""

    input_spec = _RegistrationInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        registered = nb.load(self.inputs.in_file)
        template = (
            nb.load(self.inputs.template_file)
            if self.inputs.template_file
            else mni152_brain_template()
        )
        identity = RigidTransform(np.eye(4))
        edges = template_edges(resample_to_grid(template, registered, identity))
        out_report = os.path.join(runtime.cwd, 'registration.svg')
        plot_contour_overlay(
            registered, edges, out_report, title=self.inputs.title, level=0.6, colour='lime'
        )
        self._results['out_report'] = out_report
        return runtime


class _ContactSheetInputSpec(BaseInterfaceInputSpec):
    in_files = traits.List(
        File(exists=True), mandatory=True, desc='2D NIfTIs stored as (column, row), row 0 on top'
    )
    labels = traits.List(traits.Str, mandatory=True, desc='one caption per image')
    title = traits.Str(mandatory=True, desc='figure title')


class _ContactSheetOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc='the PNG contact sheet')


class ContactSheetRPT(SimpleInterface):
    """All views of a DRR run side by side, as one PNG."""

    input_spec = _ContactSheetInputSpec
    output_spec = _ContactSheetOutputSpec

    def _run_interface(self, runtime):
        images = [
            np.asanyarray(nb.load(path).dataobj, dtype=np.float32).T
            for path in self.inputs.in_files
        ]
        out_report = os.path.join(runtime.cwd, 'contact_sheet.png')
        plot_contact_sheet(images, list(self.inputs.labels), out_report, title=self.inputs.title)
        self._results['out_report'] = out_report
        return runtime
