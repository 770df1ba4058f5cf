"""AnomalyDINO for ad: few-shot anomaly detection on DINOv2 patch features."""

__version__ = "0.1.0"
