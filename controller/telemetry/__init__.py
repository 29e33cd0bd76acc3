"""Telemetry: the ingest, the lean MQTT subscriber, the in-memory views, per-device budgets."""
