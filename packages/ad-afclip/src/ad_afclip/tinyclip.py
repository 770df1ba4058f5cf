"""TinyCLIP's name for open_clip, shared by the record (``plugin.py``, no heavy imports) and
the loader (``clip_models.py``) without either importing the other."""

TINYCLIP_8M = "TinyCLIP-ViT-8M-16-Text-3M"
