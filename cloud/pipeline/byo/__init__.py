"""Bring-your-own models: import ONNX, LiteRT and OpenVINO IR classifiers and detectors as packages."""
