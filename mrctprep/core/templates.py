"""The template that mrctprep registers to by default: its BIDS ``space-`` label."""

from __future__ import annotations

#: The ``space-`` label of nilearn's ICBM 2009a symmetric 1 mm T1, our default target.
TEMPLATE_NAME = 'MNI152NLin2009aSym'
