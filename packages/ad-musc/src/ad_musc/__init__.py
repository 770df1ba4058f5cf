"""MuSc (Li et al., ICLR 2024) for ``ad``: zero-shot, by mutual scoring of the test set."""

__version__ = "0.1.0"
