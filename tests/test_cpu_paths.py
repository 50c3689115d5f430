"""Where CPU mode caches DeepSpeed's JIT-built ops."""

from __future__ import annotations

import sys

from openrlhf_cero.cpu import paths


def test_each_python_environment_has_its_own_ops_cache(monkeypatch):
    """Two clones with their own .venv must not rebuild each other's ops: a build's ninja
    file records its environment's include paths."""
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    here = paths.torch_extensions_dir()
    assert here == paths.torch_extensions_dir()  # stable: setup, driver and workers meet
    monkeypatch.setattr(sys, "prefix", "/somewhere/else/.venv")
    elsewhere = paths.torch_extensions_dir()
    assert elsewhere != here
    assert elsewhere.rsplit("/", 1)[0] == here.rsplit("/", 1)[0]  # side by side under one cache
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/chosen/by/user")
    assert paths.torch_extensions_dir() == "/chosen/by/user"
