"""``mrctprep import``: CT images as DICOM, NRRD or NIfTI into a BIDS dataset, in HU."""

#: The formats in the order ``source_format='auto'`` prefers them: DICOM carries the most facts.
FORMATS = ('dcm', 'nrrd', 'nii')
