"""raredet: object detection on imbalanced data, configured by a TF OD API-style pipeline.config."""

__version__ = "0.1.0"
