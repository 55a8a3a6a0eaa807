"""Device traffic: the MQTT bridge, report ingest, and the wiring every control-plane process shares."""
