"""Pipelines that process each input image on its own: one sub-workflow per image."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mrctprep.core.bids import SubjectData
from mrctprep.workflows.literate import LiterateWorkflow


def image_id(source_file: str, subject_data: SubjectData) -> str:
    """A node-name-safe id of an image within its subject: ``acq_fast_run_2_T1w``."""
    name = source_file.rsplit('/', 1)[-1].split('.')[0]
    name = name.removeprefix(subject_data.label + '_')
    return ''.join(c if c.isalnum() else '_' for c in name)


def init_per_image_wf(
    *,
    subject_data: SubjectData,
    queries: Iterable[str],
    init_image_wf: Callable[..., LiterateWorkflow],
    settings: Mapping[str, Any],
    prefix: str,
    name: str,
) -> LiterateWorkflow:
    """``init_image_wf(source_file=…, **settings, name='<prefix>_<image id>_wf')`` for each
    image found by ``queries``, side by side in one workflow."""
    workflow = LiterateWorkflow(name=name)
    for query in queries:
        for source_file in subject_data.files.get(query, []):
            image_name = f'{prefix}_{image_id(source_file, subject_data)}_wf'
            workflow.add_nodes(
                [init_image_wf(source_file=source_file, **settings, name=image_name)]
            )
    return workflow
