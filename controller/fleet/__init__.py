"""The MQTT side: what devices are told and asked (desired states, deployments, device calls, capture, liveness, the
fair chunk queue)."""
