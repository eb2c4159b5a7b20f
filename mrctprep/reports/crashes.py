"""The crash files nipype leaves for failed nodes: which node, which subject, which error."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Failure:
    subject: str
    node: str
    error: str
    crash_file: Path


def short_node_name(fullname: str) -> str:
    """``mrctprep_0_1_wf.sub_01_wf.reorient_wf.x`` -> ``sub-01 reorient_wf.x``."""
    parts = fullname.split('.')[1:]
    if parts and parts[0].startswith('sub_'):
        subject = parts[0].removesuffix('_wf').replace('sub_', 'sub-', 1).replace('_ses_', '_ses-')
        return f'{subject} {".".join(parts[1:])}'
    return '.'.join(parts)


def read_crash_file(crash_file: Path) -> Failure:
    """The node and the error of a crash file in ``sub-<l>/log/<run>/``."""
    text = crash_file.read_text(errors='replace')
    node = re.search(r'^Node: (.+)$', text, re.MULTILINE)
    return Failure(
        subject=crash_file.parts[-4],
        node=short_node_name(node.group(1)) if node else '(unknown node)',
        error=crash_error(text),
        crash_file=crash_file,
    )


#: what nipype appends to a traceback when writing the crash file, e.g. batch plugins (SLURM)
#: have moved the node's results file away by then
_CRASH_FILE_NOTES = re.compile(
    r'\n\s*(When creating this crashfile|During the creation of this crashfile)'
)


def crash_error(text: str) -> str:
    """A crash file's error: the last line of its traceback, before nipype's own notes.

    >>> crash_error('Traceback (most recent call last):\\n  ...\\nOSError: bad file\\n\\n'
    ...     'When creating this crashfile, the results file corresponding\\n'
    ...     'to the node could not be found.\\n')
    'OSError: bad file'
    """
    traceback = _CRASH_FILE_NOTES.split(text, maxsplit=1)[0]
    lines = [line.strip() for line in traceback.splitlines() if line.strip()]
    return lines[-1] if lines else '(empty crash file)'


def collect_failures(output_dir: Path, run_uuid: str, subject: str = '*') -> list[Failure]:
    """Every crash file a run left (for one subject's label, or all), in name order."""
    pattern = f'sub-{subject}/log/{run_uuid}/crash-*.txt'
    return [read_crash_file(path) for path in sorted(output_dir.glob(pattern))]
