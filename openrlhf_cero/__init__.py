"""openrlhf-cero: per-prompt rollout allocation for OpenRLHF.

Layers (data flows down): ``allocators`` (pure numpy), ``sim`` (simulator on the
allocator contract), ``openrlhf`` (the only package that imports OpenRLHF), ``cpu``
(stand-ins so the real trainer runs without a GPU), ``cli`` (entry points).
"""

from openrlhf_cero.allocators import available_allocators, create_allocator, prompt_id

__version__ = "0.1.0"
__all__ = ["available_allocators", "create_allocator", "prompt_id", "__version__"]
