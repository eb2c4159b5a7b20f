"""A nipype workflow that carries its own methods text (the citation boilerplate)."""

from __future__ import annotations

from nipype.pipeline import engine as pe


class LiterateWorkflow(pe.Workflow):
    """A :class:`nipype.pipeline.engine.Workflow` with ``__desc__`` and ``__postdesc__``.

    As in niworkflows: each factory writes a paragraph about what its workflow does, and
    :meth:`visit_desc` joins them, each once, in execution order.
    """

    def __init__(self, name: str, base_dir: str | None = None):
        super().__init__(name, base_dir)
        self.__desc__: str | None = None
        self.__postdesc__: str | None = None

    def visit_desc(self) -> str:
        paragraphs = [self.__desc__] if self.__desc__ else []
        for node in pe.utils.topological_sort(self._graph)[0]:
            if isinstance(node, LiterateWorkflow):
                text = node.visit_desc()
                if text and text not in paragraphs:
                    paragraphs.append(text)
        if self.__postdesc__:
            paragraphs.append(self.__postdesc__)
        return ''.join(paragraphs)
