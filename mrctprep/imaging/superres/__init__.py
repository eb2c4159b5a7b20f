"""UniRes's multi-channel super-resolution (Brudfors et al., 2018, 2019) in fast PyTorch.

``operators`` the forward model of each scan and its exact adjoint, ``noise`` the histogram
estimates of noise and contrast, ``solver`` joint total variation by ADMM, ``grids`` the
output grids, ``reconstruct`` the whole method on images (the inputs rigidly co-registered).
"""
