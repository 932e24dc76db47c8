"""rl-energy test suite (a regular package, so `tests.conftest` is ours even where a dependency ships a
top-level `tests` package, as kronfluence 1.0.1 does)."""
