"""PLACEHOLDER until the CPU-mode module lands."""
import os
def cpu_mode_requested(): return os.environ.get("OPENRLHF_CERO_CPU") == "1"
def install(): pass
def ray_init_kwargs(): return {}
