"""CPU mode: run the real OpenRLHF 0.11.2 trainer (Ray, DeepSpeed, rollout actors) without a GPU.

Three pieces, all no-ops on a machine with CUDA:

* a stand-in ``vllm`` package (``vllm_standin/vllm``), generation through transformers;
* shims for the ``torch.cuda`` calls OpenRLHF makes unconditionally (:mod:`.shims`);
* Ray settings (:func:`ray_init_kwargs`) that give the placement groups logical GPUs
  and run :func:`install` in every Ray worker before it imports OpenRLHF.

Typical driver::

    from openrlhf_cero import cpu
    if cpu.cpu_mode_requested():
        cpu.install()
        ray.init(**cpu.ray_init_kwargs())
    runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__")

What is stood in, and what CPU mode cannot catch, is in docs/cpu.md.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import types
from typing import Any

from openrlhf_cero.cpu.paths import PACKAGE_PARENT_DIR, VLLM_STANDIN_DIR, torch_extensions_dir

__all__ = [
    "cpu_mode_requested",
    "install",
    "installed",
    "ray_init_kwargs",
    "setup_ray_worker",
    "use_vllm_standin_for_parsing",
    "vllm_importable",
]

logger = logging.getLogger(__name__)

CPU_MODE_ENV = "OPENRLHF_CERO_CPU"
CPU_THREADS_ENV = "OPENRLHF_CERO_CPU_THREADS"
CPU_SEED_ENV = "OPENRLHF_CERO_CPU_SEED"
# torch's historical fixed default seed (c10 ``default_rng_seed_val``).
DEFAULT_PROCESS_SEED = "67280421310721"

# Logical resources for ray.init: OpenRLHF asks for {"GPU": 1, "CPU": 1} bundles per
# actor rank, reference rank and engine; 4 covers 1 actor + 1 ref + 2 engines, or
# 2 colocated actor/ref ranks + 2 engines. They cost nothing: Ray only counts them.
DEFAULT_LOGICAL_GPUS = 4
DEFAULT_LOGICAL_CPUS = 8

# The vLLM release OpenRLHF 0.11.2 pins, whose API the stand-in mimics.
VLLM_VERSION = "0.29.0"

_installed = False


def cpu_mode_requested() -> bool:
    return os.environ.get(CPU_MODE_ENV, "") == "1"


def installed() -> bool:
    return _installed


def vllm_importable() -> bool:
    """Whether ``import vllm`` would succeed (a real vLLM, or the stand-in once installed)."""
    return importlib.util.find_spec("vllm") is not None


def use_vllm_standin_for_parsing() -> None:
    """Let OpenRLHF's launcher module import without vLLM (and without flash-attn's CUDA
    kernels), for ``--help`` and ``--dry_run``, which generate nothing. Unlike
    :func:`install`, this patches no CUDA call: a real launch still needs vLLM or CPU mode."""
    _put_vllm_standin_on_path()
    _stub_flash_attn_kernels()


def _put_vllm_standin_on_path() -> None:
    if importlib.util.find_spec("vllm") is not None:
        return  # a real vllm (or the stand-in already) is importable
    sys.path.append(str(VLLM_STANDIN_DIR))
    importlib.invalidate_caches()


def _stub_flash_attn_kernels() -> None:
    """``import flash_attn`` (done by OpenRLHF's models) needs its CUDA extension module.

    The Python-only flash-attn install has no ``flash_attn_2_cuda``; this module object
    lets the import succeed and fails with a clear message if a kernel is ever called.
    """
    if "flash_attn_2_cuda" in sys.modules or importlib.util.find_spec("flash_attn_2_cuda") is not None:
        return
    stub = types.ModuleType("flash_attn_2_cuda", "CPU mode stand-in: flash-attn kernels are unavailable.")

    def _unavailable(name: str):
        def kernel(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(
                f"flash_attn_2_cuda.{name}: flash-attn CUDA kernels do not exist in CPU mode; "
                "use --ds.attn_implementation eager or sdpa, and no --ds.packing_samples / --ds.ring_attn_size"
            )

        return kernel

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(name)

    stub.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["flash_attn_2_cuda"] = stub


def install() -> None:
    """Make this process able to run OpenRLHF on CPU. Idempotent; a no-op (with a warning) under CUDA."""
    global _installed
    if _installed:
        return
    import torch

    if torch.cuda.is_available():
        logger.warning("openrlhf_cero CPU mode requested but CUDA is available: not installing CPU stand-ins")
        _installed = True
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", torch_extensions_dir())
    _put_vllm_standin_on_path()
    _stub_flash_attn_kernels()
    from openrlhf_cero.cpu import shims

    shims.apply()
    _installed = True


def setup_ray_worker() -> None:
    """Ray's ``worker_process_setup_hook``: runs in each worker before it loads any actor.

    install() imports torch here, before Ray exports the actor's ``OMP_NUM_THREADS``,
    so torch would keep one thread per core in every worker: on a small machine the
    actor, reference and engine processes then fight over the cores (generation was
    ~10x slower on 2 cores). Pin the intra-op threads instead, as Ray would for
    ``num_cpus=1`` actors (``OPENRLHF_CERO_CPU_THREADS`` overrides).
    """
    if not cpu_mode_requested():
        return
    install()
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get(CPU_THREADS_ENV, "1")))
        _seed_process_rngs(int(os.environ.get(CPU_SEED_ENV, DEFAULT_PROCESS_SEED)))
        _seed_ppo_updates_by_step()


def _seed_process_rngs(seed: int) -> None:
    """Give every worker the same starting RNG state, so CPU runs repeat.

    This torch build seeds its default generator randomly at import, and OpenRLHF's
    single controller shuffles the prompt dataloader with that generator (no
    ``DistributedSampler`` there, no ``set_seed`` call): prompt order, and with it
    every rollout, would change from run to run. Model actors re-seed themselves
    with ``--train.seed`` afterwards, as they do on GPUs.
    """
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


# OpenRLHF's trainers whose ``ppo_train`` shuffles the replay buffer, and the attribute
# holding the model they step (an ``Actor`` around the DeepSpeed engine, or the engine).
_PPO_TRAINERS = {
    "openrlhf.trainer.ray.ppo_actor": ("ActorPPOTrainer", "actor"),
    "openrlhf.trainer.ray.ppo_critic": ("CriticPPOTrainer", "critic"),
}
_ppo_seeding_installed = False


def _seed_ppo_updates_by_step() -> None:
    """Seed each PPO update from (``--train.seed``, optimizer steps so far), so a resumed
    run updates the model exactly as the uninterrupted one did.

    ``ppo_train`` shuffles the replay buffer with a ``DataLoader(shuffle=True)``, which
    draws its seed from the process's torch generator, and OpenRLHF's checkpoints do not
    save that generator: after ``--ckpt.load_enable`` step k+1 took the draw of step 1
    and grouped the samples into other micro-batches, so the update differed by rounding
    (bf16) and every later step with it. The optimizer step count is in the DeepSpeed
    checkpoint, so the seed is restored with it. The patch is applied when OpenRLHF
    imports the module (engine workers, which never import DeepSpeed, stay clean).
    """
    global _ppo_seeding_installed
    if _ppo_seeding_installed:
        return
    _ppo_seeding_installed = True
    for name, (class_name, model_attr) in _PPO_TRAINERS.items():
        _after_import(name, lambda module, c=class_name, m=model_attr: _seed_ppo_train(getattr(module, c), m))


def _seed_ppo_train(trainer_cls: type, model_attr: str) -> None:
    import functools
    import hashlib

    import torch

    ppo_train = trainer_cls.ppo_train
    if getattr(ppo_train, "_cpu_mode_seeded", False):
        return

    @functools.wraps(ppo_train)
    def seeded_ppo_train(self, *args: Any, **kwargs: Any) -> Any:
        model = getattr(self, model_attr)
        engine = model if hasattr(model, "global_steps") else model.model  # Actor wraps the engine
        key = f"ppo_train|{self.args.train.seed}|{int(engine.global_steps)}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ppo_train(self, *args, **kwargs)

    seeded_ppo_train._cpu_mode_seeded = True  # type: ignore[attr-defined]
    trainer_cls.ppo_train = seeded_ppo_train


def _after_import(module_name: str, patch: Any) -> None:
    """Run ``patch(module)`` once ``module_name`` is imported (now, if it already is)."""
    import importlib.abc

    if module_name in sys.modules:
        patch(sys.modules[module_name])
        return

    class PatchAfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            if fullname != module_name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module: types.ModuleType) -> None:
                exec_module(module)
                patch(module)

            spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, PatchAfterImport())


def _worker_pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH", "")
    parts = [str(PACKAGE_PARENT_DIR)] + [p for p in existing.split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def ray_init_kwargs(num_gpus: int = DEFAULT_LOGICAL_GPUS, num_cpus: int = DEFAULT_LOGICAL_CPUS) -> dict[str, Any]:
    """Keyword arguments for ``ray.init`` in CPU mode.

    Keeps the env defaults OpenRLHF's ``train()`` passes to its own ``ray.init`` (which
    it skips once Ray is up) and adds what the workers need for CPU mode.
    """
    # Read by Ray when the driver starts the cluster: keeps its listeners on 127.0.0.1.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    env_vars = {
        # OpenRLHF's own defaults (cli/train_ppo_ray.py::train).
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true"),
        "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN"),
        "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": os.environ.get("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1"),
        # CPU mode.
        CPU_MODE_ENV: "1",
        CPU_THREADS_ENV: os.environ.get(CPU_THREADS_ENV, "1"),
        CPU_SEED_ENV: os.environ.get(CPU_SEED_ENV, DEFAULT_PROCESS_SEED),
        "DS_ACCELERATOR": "cpu",
        "TORCH_EXTENSIONS_DIR": torch_extensions_dir(),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"],
        "PYTHONPATH": _worker_pythonpath(),
    }
    # Under ``ray job submit`` Ray refuses a ray.init runtime env that repeats a key of the
    # job's own; the job's values reach the workers anyway, so those keys are left out.
    job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env", {})
    env_vars = {key: value for key, value in env_vars.items() if key not in job_env.get("env_vars", {})}
    runtime_env = {"env_vars": env_vars, "worker_process_setup_hook": "openrlhf_cero.cpu.setup_ray_worker"}
    if os.environ.get("RAY_ADDRESS"):
        # A running cluster (``ray start``, ``ray job submit``): its resources are set there,
        # e.g. ``ray start --head --num-cpus 8 --num-gpus 4``; only the runtime env is ours.
        return {"runtime_env": runtime_env}
    # "local": always a cluster of our own. Without it ray.init joins any cluster some
    # `ray start` left on this machine, and then refuses num_cpus / num_gpus.
    return {
        "address": "local",
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "include_dashboard": False,
        "runtime_env": runtime_env,
    }
