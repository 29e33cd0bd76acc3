"""Bringing artifacts onto the device: the MQTT and HTTP fetchers and the content-addressed store."""
