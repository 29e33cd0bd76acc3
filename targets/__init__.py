"""Inference backends and the hardware probe. Each backend is one module in `targets/backends/`."""
