"""PatchCore for ad: locally aware patch features, greedy coreset, faiss search."""

__version__ = "0.1.0"
