"""ad-runtime: exported ``ad`` models on the line without torch (decoding, preprocessing,
the bundle, ONNX Runtime); the lowest layer, which the toolkit itself builds on."""

from ad_runtime.model import Model, Scored

__all__ = ["Model", "Scored"]
