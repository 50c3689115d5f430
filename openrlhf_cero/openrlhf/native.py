"""Whose hooks run: a natively hooked OpenRLHF's own, or the plugin's runtime subclasses.

An OpenRLHF with ``patches/`` applied (docs/upstreaming.md) has ``--rollout.allocator``,
per-prompt counts in its samples generator, advantages for groups of any size and the
allocator state in ``client_states``, and it builds allocators from the entry-point group
``openrlhf.rollout_allocators``. There the plugin installs nothing at run time: its
launcher keeps its flags and checks, and hands the allocator's constructor keywords to
OpenRLHF as ``--rollout.allocator_kwargs`` (JSON), so OpenRLHF builds the same allocator the
plugin would. On stock OpenRLHF 0.11.2 the plugin installs its subclasses, as before.

``OPENRLHF_CERO_RUNTIME_HOOKS=0`` forbids the subclasses everywhere (a check that a run
needs nothing but OpenRLHF's own code); on stock OpenRLHF that leaves only ``uniform``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

from openrlhf_cero.allocators import AllocatorError

RUNTIME_HOOKS_ENV = "OPENRLHF_CERO_RUNTIME_HOOKS"

# What the patch adds to OpenRLHF's samples generator; looked up in the source so that
# detecting it imports nothing (importing the generator pulls in Ray, vLLM and torch).
_NATIVE_GENERATOR = Path("trainer", "ppo_utils", "samples_generator.py")
_NATIVE_MARKER = "def load_rollout_allocator("


def openrlhf_is_natively_hooked() -> bool:
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        return False
    generator = Path(next(iter(spec.submodule_search_locations))) / _NATIVE_GENERATOR
    return generator.is_file() and _NATIVE_MARKER in generator.read_text(encoding="utf-8")


def runtime_hooks_allowed() -> bool:
    return os.environ.get(RUNTIME_HOOKS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    """Our flags on OpenRLHF's parser. A natively hooked OpenRLHF already has
    ``--rollout.allocator``; ours (same destination and default, plus the alias
    ``--rollout_allocator``) takes its place."""
    from openrlhf_cero.openrlhf.flags import add_allocator_arguments
    from openrlhf_cero.openrlhf.scheduler_flags import add_scheduler_arguments

    if openrlhf_is_natively_hooked():
        parser.conflict_handler = "resolve"
    add_allocator_arguments(parser)
    add_scheduler_arguments(parser)


def prepare_hooks(args: SimpleNamespace) -> bool:
    """Whether the plugin must install its runtime subclasses for this (checked) launch.

    With native hooks, fills ``args.rollout.allocator_kwargs`` from our flags: the same
    keywords the plugin's own ``allocator_from_args`` passes (entries the user gave in
    ``--rollout.allocator_kwargs`` win).
    """
    from openrlhf_cero.openrlhf.flags import allocator_settings
    from openrlhf_cero.openrlhf.scheduler_flags import NO_SCHEDULER, scheduler_name

    name = args.rollout.allocator
    scheduler = scheduler_name(args)
    if scheduler != NO_SCHEDULER and (openrlhf_is_natively_hooked() or not runtime_hooks_allowed()):
        why = "this OpenRLHF has patches/ applied" if openrlhf_is_natively_hooked() else f"{RUNTIME_HOOKS_ENV}=0"
        raise AllocatorError(
            f"--rollout_scheduler {scheduler} needs the plugin's runtime hooks in OpenRLHF's trainer, and {why}; "
            "use --rollout_scheduler none, or a stock OpenRLHF 0.11.2 with the plugin's hooks on"
        )
    if openrlhf_is_natively_hooked():
        if args.allocator.fresh_on_resume:
            raise AllocatorError(
                "--allocator.fresh_on_resume is a flag of the plugin's runtime hooks; an OpenRLHF with patches/ "
                "applied restores the allocator itself: resume from another checkpoint instead"
            )
        _, settings = allocator_settings(args)
        if settings.get("budget_mode") == "global":
            raise AllocatorError(
                "--allocator.cero.budget_mode global needs the plugin's runtime hooks (they size each step and the "
                "learning-rate schedule to the global budget); the hooks of patches/ keep every step's total: use "
                "--allocator.cero.budget_mode step there, or a stock OpenRLHF 0.11.2 with the plugin"
            )
        given = json.loads(getattr(args.rollout, "allocator_kwargs", None) or "{}")
        args.rollout.allocator_kwargs = json.dumps({**settings, **given})
        return False
    if runtime_hooks_allowed():
        return True
    if name != "uniform":
        raise AllocatorError(
            f"--rollout_allocator {name} needs hooks in OpenRLHF, but {RUNTIME_HOOKS_ENV}=0 turns off the plugin's "
            "and this OpenRLHF has none of its own; unset the variable, or install an OpenRLHF with patches/ applied "
            "(docs/upstreaming.md)"
        )
    return False
