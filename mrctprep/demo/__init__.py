"""`mrctprep demo`: a small synthetic travelling-subject BIDS dataset of MR and CT heads."""
