"""``mrctprep demo``: the example BIDS dataset (T1w and CT of two anatomies at two sites)."""
