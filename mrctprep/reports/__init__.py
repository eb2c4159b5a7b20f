"""Reports: the HTML pages a QC session is run from, and the run's citations.

``sub-<label>.html`` (one per subject, from its outputs, sidecars, figures and logs) and
``group.html`` (the group tables, per-site plots, a mosaic and QC rating), both self-contained
and working offline; ``logs/CITATION.md`` and ``.bib`` for what a run used.
"""
