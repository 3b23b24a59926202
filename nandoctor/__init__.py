"""nandoctor: finds why a PyTorch training run goes NaN or refuses to learn.

Kept free of heavy imports so that ``nandoctor --help`` starts fast.
"""

__version__ = "0.1.0"
