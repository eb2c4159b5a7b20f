"""Digitally reconstructed radiographs (DRR) from CT: DeepDRR's physics on a digital C-arm.

``physics`` turns Hounsfield units into per-material densities and path integrals into
detector values; ``geometry`` places the patient and the C-arm and gives every view its rays
and projection matrix; ``renderer`` integrates a volume along those rays with torch (CPU or
CUDA); ``presets`` holds DeepDRR's and the GENSYN thesis' settings; ``simulate`` joins them.
"""
