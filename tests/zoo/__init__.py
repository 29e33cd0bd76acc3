"""A zoo of real third-party models (from PyPI wheels) and scikit-learn exports, for tests and benchmarks.

Import it as the top-level package `zoo` with `tests/` on sys.path:

- from a test under tests/: pytest already puts tests/ on sys.path (rootdir conftest, prepend import mode), so
  `from zoo import catalog, fetch, native` just works;
- from a bench script run as `python bench/NAME.py` from the repo root (sys.path[0] is then bench/):
      sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
      from zoo import catalog
  (insert tests/ first: a bench/zoo.py would otherwise shadow the package).

Models are downloaded on first use into $EDGEFLEET_ZOO_CACHE (default ~/.cache/edgefleet/zoo); never committed.
"""
