"""Nipype interface over :func:`mrctprep.imaging.superres.reconstruct.super_resolve`."""

from __future__ import annotations

import logging
import os

from nipype.interfaces.base import (
    Bunch,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from mrctprep.core.devices import configure_torch_cpu
from mrctprep.imaging.io import load_anatomical
from mrctprep.imaging.superres.reconstruct import (
    METHODS,
    InputScan,
    SuperResSettings,
    modality_of,
    super_resolve,
)
from mrctprep.imaging.superres.solver import SolverSettings
from mrctprep.interfaces.base import TorchInputSpec, save_image

LOGGER = logging.getLogger(__name__)


class _SuperResolutionInputSpec(TorchInputSpec):
    in_files = traits.List(File(exists=True), mandatory=True, desc='every scan of the session')
    channels = traits.List(
        traits.Str,
        mandatory=True,
        desc='the channel (BIDS suffix) of each scan; scans of one channel are repeats',
    )
    voxel_size = traits.Float(1.0, usedefault=True, desc='isotropic output voxel size (mm)')
    method = traits.Enum(*METHODS, usedefault=True, desc='unires (ADMM) or linear (reslice)')
    common_grid = traits.Bool(False, usedefault=True, desc="UniRes's --common_output grid")
    max_iter = traits.Int(SolverSettings.max_iter, usedefault=True, desc='ADMM iterations cap')
    interleaved = traits.Bool(
        False,
        usedefault=True,
        desc="UniRes's --scale: fit a per-scan odd/even slice intensity correction (MR only)",
    )
    random_seed = traits.Int(0, usedefault=True, desc='seed of the registrations')


class _SuperResolutionOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc='one super-resolved image per channel')
    input_views = traits.List(
        File(exists=True), desc="each channel's first scan on the output grid (QC figure)"
    )
    metadata = traits.List(traits.Dict, desc='one sidecar dict per channel')


class SuperResolution(SimpleInterface):
    """UniRes super-resolution of all scans of a subject/session onto one isotropic grid."""

    input_spec = _SuperResolutionInputSpec
    output_spec = _SuperResolutionOutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        configure_torch_cpu(self.inputs.num_threads)
        scans = _load_scans(self.inputs.in_files, self.inputs.channels)
        settings = SuperResSettings(
            voxel_size=self.inputs.voxel_size,
            method=self.inputs.method,
            common_grid=self.inputs.common_grid,
            max_iter=self.inputs.max_iter,
            interleaved=self.inputs.interleaved,
            device=self.inputs.device,
            seed=self.inputs.random_seed,
        )
        results = super_resolve(scans, settings, progress=LOGGER.debug)
        self._results['out_files'] = [
            save_image(result.image, runtime, f'superres_{result.channel}.nii')
            for result in results
        ]
        self._results['input_views'] = [
            save_image(result.input_view, runtime, f'input_{result.channel}.nii')
            for result in results
        ]
        self._results['metadata'] = [result.metadata for result in results]
        return runtime


def _load_scans(paths: list[str], channels: list[str]) -> list[InputScan]:
    """Each scan checked and labelled with its channel and modality."""
    scans = []
    for path, channel in zip(paths, channels, strict=True):
        img, warnings = load_anatomical(path)
        for warning in warnings:
            LOGGER.info(warning)  # thick slices are what this pipeline is for
        scans.append(InputScan(img, channel, modality_of(channel), os.path.basename(path)))
    return scans
