"""EdgeFleet device agent.

Runs on the camera device: verifies and installs model packages, runs inference on
camera feeds and reports telemetry over MQTT. It never imports the control plane
(`cloud`), torch, fastapi or sqlmodel; `make test` enforces that with import-linter.
"""

__version__ = "0.1.0"
