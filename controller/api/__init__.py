"""The HTTP API: the app, shared state, auth, request guard, views, /metrics, the server, and the routes."""
