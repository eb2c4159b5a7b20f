"""One CT to Hounsfield units, int16, RAS+: the first step of every CT pipeline."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from mrctprep.core.bids import read_sidecar
from mrctprep.interfaces.ct import ConformCT
from mrctprep.workflows.literate import LiterateWorkflow


def init_conform_ct_wf(*, source_file: str, name: str = 'conform_ct_wf') -> LiterateWorkflow:
    """Check that the CT is in HU (HU + 1024 shifted back), set the scanner's padding to air.

    The padding value comes from the raw sidecar of ``source_file`` (``PixelPaddingValue``,
    which ``mrctprep import`` writes), read here, once, when the graph is built.

    Input (``inputnode``): ``source_file``. Outputs (``outputnode``): ``out_file`` (int16 HU,
    RAS+) and ``metadata`` (what changed).
    """
    workflow = LiterateWorkflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=['source_file']), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=['out_file', 'metadata']), name='outputnode')
    conform = pe.Node(ConformCT(), name='conform')
    padding = read_sidecar(source_file).get('PixelPaddingValue')
    if padding is not None:
        conform.inputs.padding_value = float(padding)
    # fmt: off
    workflow.connect([
        (inputnode, conform, [('source_file', 'in_file')]),
        (conform, outputnode, [('out_file', 'out_file'), ('metadata', 'metadata')]),
    ])
    # fmt: on
    return workflow
