"""Optimisation: INT8 quantization (ONNX Runtime, NNCF), OpenVINO IR, LiteRT, and runners
that execute any built artifact the way a device would."""
