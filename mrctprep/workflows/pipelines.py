"""The pipelines that ``--pipelines`` selects: what each needs and which factory builds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mrctprep.core.bids import SubjectData
from mrctprep.core.config import RunConfig
from mrctprep.workflows.ct_ingest import CT_INGEST_INPUTS, init_ct_ingest_wf
from mrctprep.workflows.drr import DRR_INPUTS, init_drr_wf
from mrctprep.workflows.literate import LiterateWorkflow
from mrctprep.workflows.mr_harmonize import init_mr_harmonize_wf
from mrctprep.workflows.mr_preproc import MR_PREPROC_INPUTS, init_mr_preproc_wf
from mrctprep.workflows.reorient import REORIENT_INPUTS, init_reorient_wf
from mrctprep.workflows.superres import SUPERRES_INPUTS, init_superres_wf


@dataclass(frozen=True)
class Pipeline:
    """A selectable pipeline; it runs for a subject that has any of its ``inputs``."""

    name: str
    level: str
    summary: str
    inputs: tuple[str, ...]
    factory: Callable[..., LiterateWorkflow]
    #: A pipeline this one extends: it is built under that one's name, so that the nodes they
    #: share keep their cache, and it replaces that one when both are selected.
    extends: str | None = None

    def accepts(self, subject_data: SubjectData) -> bool:
        return any(subject_data.files.get(query) for query in self.inputs)

    def build(self, subject_data: SubjectData, config: RunConfig) -> LiterateWorkflow:
        name = (self.extends or self.name).replace('-', '_')
        return self.factory(subject_data=subject_data, config=config, name=f'{name}_wf')


PIPELINES: dict[str, Pipeline] = {
    pipeline.name: pipeline
    for pipeline in (
        Pipeline(
            name='mr-preproc',
            level='participant',
            summary='T1w: RAS+, HD-BET skull strip, N4, rigid to MNI152, FSL MNI grid, '
            'median 500, IGUANe crop (the harmonization model input) + QC figures',
            inputs=MR_PREPROC_INPUTS,
            factory=init_mr_preproc_wf,
        ),
        Pipeline(
            name='mr-harmonize',
            level='participant',
            summary='mr-preproc, then IGUANe harmonization (weights: --weights iguane=FILE or '
            'group --train iguane): harmonized T1w on the model grid and in native space',
            inputs=MR_PREPROC_INPUTS,
            factory=init_mr_harmonize_wf,
            extends='mr-preproc',
        ),
        Pipeline(
            name='reorient',
            level='participant',
            summary='anatomical MR and CT images to RAS+ voxel order (no resampling) + QC figure',
            inputs=REORIENT_INPUTS,
            factory=init_reorient_wf,
        ),
        Pipeline(
            name='ct-ingest',
            level='participant',
            summary='CT checked and conformed: HU (fixing HU+1024), padding to air, int16, '
            'RAS+ + QC figure in four windows',
            inputs=CT_INGEST_INPUTS,
            factory=init_ct_ingest_wf,
        ),
        Pipeline(
            name='drr',
            level='participant',
            summary='synthetic X-rays of each CT on a digital C-arm (DeepDRR physics, presets, '
            'view grids): float32 NIfTI + 16-bit PNG + projection matrix per view, contact sheet',
            inputs=DRR_INPUTS,
            factory=init_drr_wf,
        ),
        Pipeline(
            name='superres',
            level='participant',
            summary='UniRes super-resolution: all scans of a session (runs = repeats) '
            'co-registered and fitted jointly onto one isotropic grid + QC figures',
            inputs=SUPERRES_INPUTS,
            factory=init_superres_wf,
        ),
    )
}

DEFAULT_PIPELINES = ['mr-preproc', 'ct-ingest']


def pipelines_to_build(selected: list[str]) -> list[Pipeline]:
    """The selected pipelines, less those that a selected pipeline extends (it builds them)."""
    extended = {PIPELINES[name].extends for name in selected}
    return [PIPELINES[name] for name in selected if name not in extended]


def describe_pipelines() -> str:
    """The text of ``mrctprep --list-pipelines``."""
    lines = ['pipeline     level        needs (any of)               does']
    for pipeline in PIPELINES.values():
        needs = ', '.join(pipeline.inputs)
        lines.append(f'{pipeline.name:<12} {pipeline.level:<12} {needs:<28} {pipeline.summary}')
    lines.append(
        '\nInput names are the queries of --bids-filter-file: t1w, t2w, flair, pdw '
        '(anat/*_T1w, _T2w, _FLAIR, _PDw) and ct (anat/*_ct).'
    )
    return '\n'.join(lines)
