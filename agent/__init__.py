"""The edge agent: pulls models over MQTT, verifies them, serves them locally, reports upstream."""

__version__ = "0.1.0"
