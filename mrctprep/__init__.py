"""mrctprep: a BIDS App for MR and CT images."""

__version__ = '0.1.0'
__all__ = ['__version__']
