"""edgectl: the operator CLI for the edge fleet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgefleet")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
