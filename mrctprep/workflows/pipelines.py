"""The pipelines that ``--pipelines`` selects: plain data, read without importing nipype.

Each entry says what a pipeline needs, which sections of the run configuration it reads, and
where its factory lives; :func:`build_pipeline` imports the factory only when a graph is built,
so that ``mrctprep --help`` and ``--list-pipelines`` answer without nipype or torch. Adding a
pipeline is one entry here, one workflow module and its interfaces and models.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pybids and nipype are imported when a graph is built, not for --help
    from mrctprep.core.bids import SubjectData
    from mrctprep.core.config import RunConfig
    from mrctprep.workflows.literate import LiterateWorkflow

ANATOMICAL_INPUTS = ('t1w', 't2w', 'flair', 'pdw', 'ct')


@dataclass(frozen=True)
class Pipeline:
    """A selectable pipeline; it runs for a subject that has any of its ``inputs``."""

    name: str
    level: str
    summary: str
    #: the queries (``--bids-filter-file`` names) whose images it processes
    inputs: tuple[str, ...]
    #: ``module:function`` of its ``init_<name>_wf`` factory
    factory: str
    #: the sections of :class:`RunConfig` that its factory takes, by name
    sections: tuple[str, ...] = ()
    #: factories that build one image's workflow, called once per input image
    per_image: bool = True
    #: A pipeline this one extends: it is built under that one's name, so that the nodes they
    #: share keep their cache, and it replaces that one when both are selected.
    extends: str | None = None

    @property
    def workflow_name(self) -> str:
        return (self.extends or self.name).replace('-', '_') + '_wf'

    def accepts(self, subject_data: SubjectData) -> bool:
        return any(subject_data.files.get(query) for query in self.inputs)


PIPELINES: dict[str, Pipeline] = {
    pipeline.name: pipeline
    for pipeline in (
        Pipeline(
            name='mr-preproc',
            level='participant',
            summary='T1w: RAS+, HD-BET skull strip, N4, rigid to MNI152, FSL MNI grid, '
            'median 500, IGUANe crop (the harmonization model input) + QC figures',
            inputs=('t1w',),
            factory='mrctprep.workflows.mr_preproc:init_mr_preproc_wf',
            sections=('mr', 'execution'),
        ),
        Pipeline(
            name='mr-harmonize',
            level='participant',
            summary='mr-preproc, then IGUANe harmonization (weights: --weights iguane=FILE or '
            'group --train iguane): harmonized T1w on the model grid and in native space',
            inputs=('t1w',),
            factory='mrctprep.workflows.mr_harmonize:init_mr_harmonize_wf',
            sections=('mr', 'models', 'execution'),
            extends='mr-preproc',
        ),
        Pipeline(
            name='reorient',
            level='participant',
            summary='anatomical MR and CT images to RAS+ voxel order (no resampling) + QC figure',
            inputs=ANATOMICAL_INPUTS,
            factory='mrctprep.workflows.reorient:init_reorient_wf',
        ),
        Pipeline(
            name='ct-ingest',
            level='participant',
            summary='CT checked and conformed: HU (fixing HU+1024), padding to air, int16, '
            'RAS+ + QC figure in the windows that fit the body part',
            inputs=('ct',),
            factory='mrctprep.workflows.ct_ingest:init_ct_ingest_wf',
        ),
        Pipeline(
            name='drr',
            level='participant',
            summary='synthetic X-rays of each CT on a digital C-arm (DeepDRR physics, presets, '
            'view grids): float32 NIfTI + 16-bit PNG + projection matrix per view, contact sheet',
            inputs=('ct',),
            factory='mrctprep.workflows.drr:init_drr_wf',
            sections=('drr', 'models', 'execution'),
        ),
        Pipeline(
            name='superres',
            level='participant',
            summary='UniRes super-resolution: all scans of a session (runs = repeats) '
            'co-registered and fitted jointly onto one isotropic grid + QC figures',
            inputs=ANATOMICAL_INPUTS,
            factory='mrctprep.workflows.superres:init_superres_wf',
            sections=('superres', 'execution'),
            per_image=False,
        ),
        Pipeline(
            name='organ-seg',
            level='participant',
            summary='EfficientSCN: liver, kidneys, spleen, pancreas on each CT (uint8 dseg, '
            'volumes and HU per organ, box in the sidecar) + QC figure',
            inputs=('ct',),
            factory='mrctprep.workflows.organ_seg:init_organ_seg_wf',
            sections=('models', 'execution'),
        ),
        Pipeline(
            name='ct-harmonize',
            level='participant',
            summary='CTFlow: each CT mapped onto the reference reconstruction (weights: '
            '--weights ctflow=FILE or group --train ctflow); int16 HU, optional SD of samples '
            '+ QC figure',
            inputs=('ct',),
            factory='mrctprep.workflows.ct_harmonize:init_ct_harmonize_wf',
            sections=('models', 'execution'),
        ),
    )
}

DEFAULT_PIPELINES = ['mr-preproc', 'ct-ingest']


def pipelines_to_build(selected: list[str] | tuple[str, ...]) -> list[Pipeline]:
    """The selected pipelines, less those that a selected pipeline extends (it builds them)."""
    extended = {PIPELINES[name].extends for name in selected}
    return [PIPELINES[name] for name in selected if name not in extended]


def build_pipeline(
    pipeline: Pipeline, subject_data: SubjectData, config: RunConfig
) -> LiterateWorkflow:
    """The pipeline's workflow for one subject: its factory, given the output folder, the
    sections it reads and, per image or once, the subject's input files."""
    from mrctprep.workflows.images import init_per_image_wf

    module, _, function = pipeline.factory.partition(':')
    factory = getattr(importlib.import_module(module), function)
    settings = {
        'output_dir': config.inputs.output_dir,
        **{section: getattr(config, section) for section in pipeline.sections},
    }
    if not pipeline.per_image:
        return factory(subject_data=subject_data, **settings, name=pipeline.workflow_name)
    return init_per_image_wf(
        subject_data=subject_data,
        queries=pipeline.inputs,
        init_image_wf=factory,
        settings=settings,
        prefix=pipeline.workflow_name.removesuffix('_wf'),
        name=pipeline.workflow_name,
    )


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
