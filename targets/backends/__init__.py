"""One module per inference runtime; `targets.registry` discovers them, so adding a backend is adding a file."""
