"""The device's request side: the v2 HTTP routes and codec, the HTTP transport, remote inference and capture over
MQTT."""
