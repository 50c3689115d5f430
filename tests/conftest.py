"""Shared set-up for the test suite.

The suite runs on machines without a GPU: CPU mode (docs/cpu.md) makes OpenRLHF
importable there (stand-in vLLM, flash-attn kernel stub, CUDA shims). On a machine
with CUDA ``install()`` does nothing. The openrlhf wheel installs a top-level ``tests``
package into site-packages; pytest's importlib mode (pytest.ini) keeps ours apart.
"""

from openrlhf_cero import cpu

cpu.install()
