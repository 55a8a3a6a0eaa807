"""Running the control plane: Prometheus metrics, telemetry downsampling and retention."""
