"""Getting a version to serve: the deployer, the desired-state gate, downloads, loading, variants, timing, checks before
and after the swap, the crash guard, re-selection."""
