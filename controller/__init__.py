"""The controller: model registry, device registry, deployments, artifact serving and the HTTP API."""

__version__ = "0.1.0"
