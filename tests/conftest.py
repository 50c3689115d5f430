"""Shared fixtures. The openrlhf wheel installs a top-level ``tests`` package into
site-packages; rootdir-relative imports (pytest's importlib mode, see pytest.ini) keep
ours from being shadowed by it."""
