"""``mrctprep demo``: the demo BIDS dataset."""
