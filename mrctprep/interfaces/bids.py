"""The derivatives sink: BIDS names from entities, sidecars with provenance, atomic writes.

nipype's ``DataSink`` writes ``_subject_id_01`` trees, never BIDS, and niworkflows'
``DerivativesDataSink`` writes in place; this sink names files with
:func:`~mrctprep.core.derivatives.build_derivative_path` and renames complete files
into place, so a killed run never leaves a half-written output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from bids.layout import parse_file_entities
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

from mrctprep.core.derivatives import (
    bids_uri,
    build_derivative_path,
    software_versions,
    write_atomically,
    write_json_atomically,
)
from mrctprep.imaging.io import quantise_to_int16
from mrctprep.interfaces.base import load_nifti

#: Entities of the source that its derivatives keep.
_SOURCE_ENTITIES = ('subject', 'session', 'acquisition', 'ceagent', 'reconstruction', 'run')


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = traits.Directory(mandatory=True, desc='the derivatives dataset root')
    source_file = InputMultiObject(
        File(exists=False), mandatory=True, desc='the raw file(s) this output derives from'
    )
    in_file = File(exists=True, mandatory=True, desc='the file to write')
    entities = traits.Dict(
        traits.Str, traits.Any, usedefault=True, desc='entities added to those of the source'
    )
    suffix = traits.Str(desc='suffix (default: the source file’s)')
    datatype = traits.Str('anat', usedefault=True, desc='folder: anat, figures, …')
    dtype = traits.Str(desc='numpy dtype to store a NIfTI in (mask: uint8, dseg: int16)')
    precision = traits.Float(
        desc='store a float NIfTI as int16 with scl_slope at this step, error at most half '
        '(0: the finest step its range allows)'
    )
    static_meta = traits.Dict(
        traits.Str, traits.Any, usedefault=True, desc='sidecar fields known when building'
    )
    meta_dict = InputMultiObject(
        traits.Dict(traits.Str, traits.Any),
        desc='sidecar fields computed by the workflow (several dicts are merged in order)',
    )


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(desc='the written derivative')
    out_meta = File(desc='its JSON sidecar (not written for figures and DICOM files)')


class DerivativesDataSink(SimpleInterface):
    """Write ``in_file`` into the derivatives tree under its BIDS name, with a sidecar."""

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec

    def _run_interface(self, runtime: Bunch) -> Bunch:
        sources = list(self.inputs.source_file)
        source_entities = parse_file_entities(sources[0])
        entities = {
            key: source_entities[key] for key in _SOURCE_ENTITIES if key in source_entities
        }
        entities.update(self.inputs.entities)
        extension = _derivative_extension(self.inputs.in_file)
        relative = build_derivative_path(
            entities,
            suffix=self.inputs.suffix or source_entities['suffix'],
            extension=extension,
            datatype=self.inputs.datatype,
        )
        out_file = Path(self.inputs.base_directory) / relative
        write_atomically(out_file, lambda tmp: _copy_derivative(self.inputs, tmp))
        self._results['out_file'] = str(out_file)

        # a DICOM object carries its own metadata, and its sidecar would be the label map's
        if self.inputs.datatype != 'figures' and extension != '.dcm':
            sidecar = {
                'Sources': [bids_uri(source) for source in sources],
                **self.inputs.static_meta,
                **{k: v for fields in self.inputs.meta_dict or [] for k, v in fields.items()},
                'Software': software_versions(),
            }
            out_meta = out_file.with_name(out_file.name[: -len(extension)] + '.json')
            write_json_atomically(out_meta, sidecar)
            self._results['out_meta'] = str(out_meta)
        return runtime


def _derivative_extension(in_file: str) -> str:
    """NIfTI outputs are always compressed (work-dir intermediates are not, for speed)."""
    name = Path(in_file).name
    if name.endswith(('.nii', '.nii.gz')):
        return '.nii.gz'
    if name.endswith('.tsv.gz'):
        return '.tsv.gz'
    return Path(name).suffix


def _copy_derivative(inputs: _DerivativesDataSinkInputSpec, destination: Path) -> None:
    """Copy a file; NIfTIs are rewritten compressed, in ``dtype`` when one is given."""
    if not str(destination).endswith(('.nii', '.nii.gz')):
        shutil.copyfile(inputs.in_file, destination)
        return
    img = load_nifti(inputs.in_file)
    # int16 holds no NaN or infinity: such an image keeps its float type.
    if isdefined(inputs.precision) and np.isfinite(values := img.get_fdata()).all():
        codes, slope, intercept = quantise_to_int16(values, inputs.precision)
        img = img.__class__(codes, img.affine, img.header)
        img.set_data_dtype(np.int16)
        img.header.set_slope_inter(slope, intercept)  # written as they are: codes are int16
    elif inputs.dtype:
        data = np.asanyarray(img.dataobj).astype(inputs.dtype)
        img = img.__class__(data, img.affine, img.header)
        img.set_data_dtype(inputs.dtype)
    img.to_filename(destination)
