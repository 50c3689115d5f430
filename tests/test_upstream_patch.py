"""The upstream patch (patches/, docs/upstreaming.md) against OpenRLHF 0.11.2.

Every tree here is built by ``scripts/patched_openrlhf.sh`` from the installed
openrlhf 0.11.2, each file checked against the release's RECORD hashes first. Shown:

- the series applies cleanly (``git apply --check``, then ``git am``) and is exactly
  ``git format-patch`` of that history;
- OpenRLHF's own tests pass on the stock tree, on the patched tree (with the patch's new
  tests) and with the shipped, unpatched tests against the patched code;
- ``uniform`` runs OpenRLHF's code path: bit-identical advantages and identical dispatch;
- the patched generator's loop makes the same decisions as the plugin's generator, for the
  same allocator;
- the real trainer on the patched tree, with the plugin's runtime hooks off (e2e).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

from openrlhf_cero.allocators import AllocatorError, create_allocator
from openrlhf_cero.openrlhf import native

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "patched_openrlhf.sh"
PATCHES = sorted((ROOT / "patches").glob("*.patch"))
# OpenRLHF files the series changes (tests included); nothing else may differ.
PATCHED_FILES = {
    "openrlhf/cli/train_ppo_ray.py",
    "openrlhf/trainer/ppo_trainer.py",
    "openrlhf/trainer/ppo_trainer_async.py",
    "openrlhf/trainer/ppo_utils/experience.py",
    "openrlhf/trainer/ppo_utils/experience_maker.py",
    "openrlhf/trainer/ppo_utils/samples_generator.py",
    "tests/test_reward_shaping.py",
    "tests/test_samples_generator.py",
}


def build_tree(dest: Path, *options: str) -> Path:
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), *options, str(dest)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


def git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("openrlhf")
    return SimpleNamespace(stock=build_tree(base / "stock", "--stock"), patched=build_tree(base / "patched"))


@pytest.fixture(scope="module")
def test_allocator_site(tmp_path_factory) -> Path:
    """A directory that, on the path, registers the test-only ``unequal_test`` allocator in
    the entry-point group, as an installed third-party package would."""
    site = tmp_path_factory.mktemp("entry_points")
    dist_info = site / "openrlhf_cero_testing-0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: openrlhf-cero-testing\nVersion: 0\n")
    (dist_info / "entry_points.txt").write_text(
        "[openrlhf.rollout_allocators]\nunequal_test = openrlhf_cero.allocators.testing:UnequalTestAllocator\n"
    )
    return site


def load_file(name: str, path: Path) -> ModuleType:
    """A module from one file of a tree; its own imports resolve to the installed openrlhf."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ── the patch applies, and is what git made of a real history ──


def test_series_applies_cleanly_to_pristine_openrlhf_and_changes_only_its_files(trees):
    assert [p.name[:5] for p in PATCHES] == ["0001-", "0002-"]
    for patch in PATCHES:
        assert re.match(r"From [0-9a-f]{40} ", patch.read_text()), patch  # git format-patch output
    # The script ran `git apply --check` and `git am`: both commits are there, on the tagged release.
    subjects = git(trees.patched, "log", "--format=%s", "v0.11.2..HEAD").splitlines()
    assert subjects == [
        "feat: per-prompt rollout counts chosen by a rollout allocator",
        "feat: group advantages for prompt groups of any size",
    ]
    assert set(git(trees.patched, "diff", "--name-only", "v0.11.2", "HEAD").split()) == PATCHED_FILES
    assert git(trees.stock, "status", "--porcelain") == "" and git(trees.stock, "tag") == "v0.11.2\n"
    # Same identities and dates as the script: format-patch of the rebuilt history is byte-identical.
    out = trees.patched.parent / "regenerated"
    git(trees.patched, "format-patch", "-q", "--no-signature", "v0.11.2", "-o", str(out))
    assert [p.read_bytes() for p in sorted(out.glob("*.patch"))] == [p.read_bytes() for p in PATCHES]


def test_script_refuses_sources_that_are_not_the_release(tmp_path):
    site = Path(importlib.util.find_spec("openrlhf").origin).parents[1]
    fake = tmp_path / "site"
    (fake / "openrlhf").mkdir(parents=True)
    (fake / "openrlhf-0.11.2.dist-info").mkdir()
    record = (site / "openrlhf-0.11.2.dist-info" / "RECORD").read_text()
    (fake / "openrlhf-0.11.2.dist-info" / "RECORD").write_text(record)
    (fake / "openrlhf" / "__init__.py").write_text("# edited\n")
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), str(fake)], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "differs from the 0.11.2 release" in result.stderr


# ── OpenRLHF's own test suite ──


def run_openrlhf_tests(tree: Path, report: Path) -> dict[str, int]:
    """OpenRLHF's tests/ of ``tree`` against ``tree``'s openrlhf (CPU mode makes vLLM importable)."""
    code = (
        "import sys, pytest, openrlhf\n"
        "from openrlhf_cero import cpu\n"
        f"assert openrlhf.__file__.startswith({str(tree)!r}), openrlhf.__file__\n"
        "cpu.install()\n"
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--junitxml={report}', 'tests']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    assert report.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["returncode"] = result.returncode
    return counts


@pytest.mark.slow
def test_openrlhf_suite_passes_on_stock_and_patched_trees(trees, tmp_path):
    stock = run_openrlhf_tests(trees.stock, tmp_path / "stock.xml")
    patched = run_openrlhf_tests(trees.patched, tmp_path / "patched.xml")
    # The tests as shipped with 0.11.2, against the patched code.
    shipped = tmp_path / "shipped"
    git(trees.patched, "worktree", "add", "-q", "--detach", str(shipped), "HEAD")
    git(shipped, "checkout", "v0.11.2", "--", "tests")
    shipped_counts = run_openrlhf_tests(shipped, tmp_path / "shipped.xml")
    print(f"\nOpenRLHF tests: stock {stock}\npatched {patched}\nshipped tests on patched code {shipped_counts}")

    for counts in (stock, patched, shipped_counts):
        assert counts["failures"] == counts["errors"] == 0 and counts["returncode"] == 0, counts
    assert stock["passed"] > 200 and shipped_counts["passed"] == stock["passed"]
    assert shipped_counts["skipped"] == stock["skipped"]
    new_tests = patched["tests"] - stock["tests"]
    assert new_tests >= 8 and patched["passed"] == stock["passed"] + new_tests


# ── uniform is OpenRLHF's code path ──


@pytest.mark.parametrize(
    "estimator", ["group_norm", "rloo", "reinforce_baseline", "dr_grpo", "flash_reinforce", "reinforce", "gae"]
)
def test_uniform_advantages_are_bit_identical_to_stock(trees, estimator):
    stock = load_file("_stock_experience_maker", trees.stock / "openrlhf/trainer/ppo_utils/experience_maker.py")
    patched = load_file("_patched_experience_maker", trees.patched / "openrlhf/trainer/ppo_utils/experience_maker.py")
    experience_cls = load_file("_patched_experience", trees.patched / "openrlhf/trainer/ppo_utils/experience.py").Experience
    generator = torch.Generator().manual_seed(3)
    n, prompts = 8, 6
    rewards = torch.bernoulli(torch.full((n * prompts,), 0.4), generator=generator) + 0.01 * torch.rand(
        n * prompts, generator=generator
    )
    order = torch.randperm(n * prompts, generator=generator)
    experiences = [
        experience_cls(
            index=index.tolist(),
            rewards=rewards[index],
            action_mask=torch.ones(len(index), 5),
            kl=torch.rand(len(index), 5, generator=generator) * 0.01,
            values=torch.zeros(len(index), 5),
            info={},
        )
        for index in order.split(16)
    ]
    args = SimpleNamespace(
        rollout=SimpleNamespace(n_samples_per_prompt=n),
        reward=SimpleNamespace(clip_range=(-10.0, 10.0)),
        algo=SimpleNamespace(advantage=SimpleNamespace(estimator=estimator, gamma=1.0, lambd=1.0, no_std_norm=False)),
    )

    def advantages(module):
        maker = module.RemoteExperienceMaker.__new__(module.RemoteExperienceMaker)
        maker.advantage_estimator = estimator
        maker.kl_ctl = SimpleNamespace(value=0.05)
        maker.strategy = SimpleNamespace(args=copy.deepcopy(args))
        return maker.compute_advantages_and_returns(copy.deepcopy(experiences))

    for ours, theirs in zip(advantages(patched), advantages(stock)):
        assert torch.equal(ours.advantages, theirs.advantages) and torch.equal(ours.returns, theirs.returns)
        assert ours.info.keys() == theirs.info.keys()
        assert all(torch.equal(ours.info[key], theirs.info[key]) for key in ours.info)


class FakeEngine:
    """A rollout engine stand-in: deterministic responses and rewards. A prompt's k-th
    rollout (counted per engine) depends only on the prompt and k, so two generators that
    batch requests differently still see the same samples; each prompt has its own pass rate."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.drawn: dict[str, int] = {}
        self.get_num_unfinished_requests = SimpleNamespace(remote=lambda: 0)
        self.generate_responses = SimpleNamespace(remote=self._generate)

    @staticmethod
    def _unit(*parts: object) -> float:
        digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2**64

    def _generate(self, *, prompt, label, num_samples, **_kwargs) -> list[dict]:
        self.calls.append((prompt, num_samples))
        pass_rate = self._unit("pass rate", prompt) ** 2
        responses = []
        for _ in range(num_samples):
            k = self.drawn[prompt] = self.drawn.get(prompt, 0) + 1
            reward = float(self._unit(prompt, k) < pass_rate)
            tokens = [1 + int(self._unit(prompt, k, t) * 50) for t in range(6)]
            responses.append(
                dict(prompt=prompt, label=label, observation_tokens=tokens, action_ranges=[(3, 6)],
                     rollout_log_probs=None, reward=reward, scores=reward, truncated=False, extra_logs={})
            )
        return responses


FAKE_RAY = SimpleNamespace(get=lambda refs: refs, wait=lambda refs, **_: (refs[:1], refs[1:]))


def prompt_loader(count: int) -> list:
    # OpenRLHF's prompt dataloader yields (datasources, prompts, labels, images) batches of one.
    return [(["math"], [f"Question {i}: what is {i} + {2 * i}?"], [str(3 * i)], [None]) for i in range(count)]


def generator_args(allocator: str = "uniform", allocator_kwargs: str = "{}", batch_size: int = 4) -> SimpleNamespace:
    return SimpleNamespace(
        rollout=SimpleNamespace(
            batch_size=batch_size, n_samples_per_prompt=4, vllm_generate_batch_size=None,
            allocator=allocator, allocator_kwargs=allocator_kwargs,
        ),
        algo=SimpleNamespace(
            dynamic_filtering_enable=False, dynamic_filtering_range=(0.0, 1.0),
            advantage=SimpleNamespace(estimator="group_norm", is_correction_level="off"),
        ),
        vllm=SimpleNamespace(enable_sleep=False),
        train=SimpleNamespace(seed=42),
    )


def patched_generator(trees, monkeypatch, args, prompts: int):
    module = load_file("_patched_samples_generator", trees.patched / "openrlhf/trainer/ppo_utils/samples_generator.py")
    monkeypatch.setattr(module, "ray", FAKE_RAY)
    engine = FakeEngine()
    strategy = SimpleNamespace(args=args)
    return module.SamplesGenerator(strategy, prompt_loader(prompts), None, None, [engine]), engine


def test_uniform_dispatch_and_samples_are_those_of_stock(trees, monkeypatch):
    stock_module = load_file("_stock_samples_generator", trees.stock / "openrlhf/trainer/ppo_utils/samples_generator.py")
    monkeypatch.setattr(stock_module, "ray", FAKE_RAY)
    stock_engine = FakeEngine()
    stock = stock_module.SamplesGenerator(SimpleNamespace(args=generator_args()), prompt_loader(10), None, None, [stock_engine])
    ours, engine = patched_generator(trees, monkeypatch, generator_args(), prompts=10)
    assert ours.allocator is None  # uniform is built in: no plugin, no allocator object

    for _ in range(3):  # 10 prompts in batches of 4: 4, 4, then 2 and the end of the data
        mine, theirs = ours.generate_samples(max_len=64), stock.generate_samples(max_len=64)
        assert mine[1:] == theirs[1:]  # pass rate, prompts consumed, exhausted
        # (Experience here is the installed class: a group size would be a new attribute.)
        assert len(mine[0]) == len(theirs[0]) and all(getattr(s, "group_size", None) is None for s in mine[0])
        assert all(torch.equal(a.sequences, b.sequences) for a, b in zip(mine[0], theirs[0]))
        assert all(torch.equal(a.rewards, b.rewards) and a.info.keys() == b.info.keys() for a, b in zip(mine[0], theirs[0]))
    assert mine[3] is True and engine.calls == stock_engine.calls and len(engine.calls) == 10


# ── the native loop decides as the plugin does ──


def plugin_generator(monkeypatch, allocator, prompts: int):
    from openrlhf_cero.openrlhf import generator as plugin

    monkeypatch.setattr(plugin, "ray", FAKE_RAY)
    engine = FakeEngine()
    strategy = SimpleNamespace(args=generator_args())
    return plugin.AllocatingSamplesGenerator(strategy, prompt_loader(prompts), None, None, [engine], allocator=allocator), engine


SETTINGS = dict(n_samples_per_prompt=4, min_samples=2, max_samples=12, seed=42, advantage_estimator="group_norm")


GLOBAL_BUDGET = {"budget_mode": "global", "global_budget": 150, "global_steps": 10}


@pytest.mark.parametrize(
    "name,options",
    [("cero", {}), ("cero", GLOBAL_BUDGET), ("vip", {}), ("unequal_test", {"extra_round": True})],
)
def test_native_loop_makes_the_plugins_decisions(trees, test_allocator_site, monkeypatch, name, options):
    """Ten calls over 10 prompts in batches of 4 (three epochs, short last batches) with the
    same allocator settings: the same prompts get the same counts in the same rounds, the
    same groups train with the same figures, and the allocators end in the same state."""
    settings = {**SETTINGS, **options}
    monkeypatch.syspath_prepend(str(test_allocator_site))  # unequal_test's entry point
    ours, engine = patched_generator(trees, monkeypatch, generator_args(name, json.dumps(settings)), prompts=10)
    theirs, plugin_engine = plugin_generator(monkeypatch, create_allocator(name, **settings), prompts=10)
    assert type(ours.allocator) is type(theirs.allocator)

    steps = 0
    for _ in range(10):
        mine, _, consumed, exhausted = ours.generate_samples(max_len=64)
        batch, _, their_consumed, their_exhausted = theirs.generate_samples(max_len=64)
        assert (consumed, exhausted) == (their_consumed, their_exhausted), steps
        assert [s.prompts for s in mine] == [s.prompts for s in batch]
        assert len(mine) == len(batch) and all(torch.equal(a.sequences, b.sequences) for a, b in zip(mine, batch))
        assert [int(s.group_size) for s in mine] == [size for size in batch.group_sizes for _ in range(size)]
        plugin_only = ("allocator/cycles", "allocator/groups_filtered")
        expected = {k: pytest.approx(v, rel=1e-6) for k, v in batch.metrics.items() if k not in plugin_only}
        assert all({k: float(v) for k, v in s.info.items() if k.startswith("allocator/")} == expected for s in mine)
        steps += bool(mine)
    assert steps >= 6 and engine.calls == plugin_engine.calls
    assert len({size for _, size in engine.calls}) > 1  # counts really varied
    assert json.dumps(ours.allocator.state_dict()) == json.dumps(theirs.allocator.state_dict())


def test_pilot_commit_runs_natively_without_its_retry_queue(trees, monkeypatch):
    """The native loop has no ``requeue`` (optional for callers): deferred prompts come back
    with the next epoch. Every full step still trains batch x n rollouts."""
    args = generator_args("pilot_commit", json.dumps({**SETTINGS, "n_pilot": 2}), batch_size=2)
    ours, engine = patched_generator(trees, monkeypatch, args, prompts=40)
    totals = []
    while True:
        samples, _, _, exhausted = ours.generate_samples(max_len=64)
        totals.append(len(samples))
        if exhausted:
            break
    assert len(totals) > 2 and all(total == 8 for total in totals[:-1])
    assert sum(count for _, count in engine.calls) > sum(totals)  # pilot rollouts of skipped prompts


# ── the plugin's switch between its hooks and OpenRLHF's ──


def natively_hooked_in_subprocess(tree: Path | None) -> bool:
    env = {**os.environ, "PYTHONPATH": str(tree) if tree else ""}
    code = "from openrlhf_cero.openrlhf.native import openrlhf_is_natively_hooked as f; print(f())"
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return output.strip() == "True"


def test_native_hooks_are_detected_on_the_patched_tree_only(trees):
    assert natively_hooked_in_subprocess(trees.patched) is True
    assert natively_hooked_in_subprocess(trees.stock) is False
    assert natively_hooked_in_subprocess(None) is False  # the installed openrlhf 0.11.2


def plugin_args(parser, *extra: str) -> SimpleNamespace:
    from openrlhf.utils.config import hierarchize

    argv = ["--rollout_allocator", "cero", "--allocator.max_samples", "12", "--allocator.cero.saturation_scale", "16"]
    argv += ["--allocator.cero.step_floor", "0.25", *extra]
    args = hierarchize(parser.parse_args(argv))
    args.rollout.n_samples_per_prompt = 4
    args.train = SimpleNamespace(seed=5)
    args.algo = SimpleNamespace(advantage=SimpleNamespace(estimator="group_norm"))
    return args


def test_on_native_openrlhf_flags_become_the_allocator_kwargs(trees, monkeypatch):
    import argparse

    from openrlhf_cero.openrlhf.flags import allocator_from_args

    monkeypatch.setattr(native, "openrlhf_is_natively_hooked", lambda: True)
    parser = argparse.ArgumentParser()  # as the patched OpenRLHF parser has them
    parser.add_argument("--rollout.allocator", type=str, default="uniform")
    parser.add_argument("--rollout.allocator_kwargs", type=str, default="{}")
    native.add_plugin_arguments(parser)
    args = plugin_args(parser)

    assert native.prepare_hooks(args) is False  # OpenRLHF's hooks run; nothing of ours is installed
    module = load_file("_patched_samples_generator", trees.patched / "openrlhf/trainer/ppo_utils/samples_generator.py")
    built = module.load_rollout_allocator(args)
    assert built.state_dict() == allocator_from_args(args).state_dict()
    assert built.saturation_scale == 16 and built.step_floor == 0.25 and built.max_samples == 12 and built.seed == 5

    # Global budget mode sizes steps and the schedule through the plugin's runtime hooks only.
    with pytest.raises(AllocatorError, match="budget_mode global needs the plugin's runtime hooks"):
        native.prepare_hooks(plugin_args(parser, "--allocator.cero.budget_mode", "global"))


def test_on_stock_openrlhf_the_runtime_hooks_are_needed(monkeypatch):
    import argparse

    monkeypatch.delenv(native.RUNTIME_HOOKS_ENV, raising=False)
    monkeypatch.setattr(native, "openrlhf_is_natively_hooked", lambda: False)
    parser = argparse.ArgumentParser()
    native.add_plugin_arguments(parser)
    args = plugin_args(parser)
    assert native.prepare_hooks(args) is True
    monkeypatch.setenv(native.RUNTIME_HOOKS_ENV, "0")
    with pytest.raises(AllocatorError, match=f"{native.RUNTIME_HOOKS_ENV}=0 turns off the plugin's"):
        native.prepare_hooks(args)
    args.rollout.allocator = "uniform"
    assert native.prepare_hooks(args) is False  # plain OpenRLHF


# ── the real trainer on the patched tree ──


@pytest.fixture(scope="module")
def e2e_env(trees, test_allocator_site) -> dict[str, str]:
    """CPU mode, the patched tree first on the path, the plugin's runtime hooks off, and the
    test-only allocator's entry point."""
    env = dict(os.environ)
    env.update(
        OPENRLHF_CERO_CPU="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(trees.patched), str(test_allocator_site)]),
        **{native.RUNTIME_HOOKS_ENV: "0"},
    )
    return env


def scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    """Tensorboard scalars by tag (without the ``train/`` prefix) and step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in sorted(tb_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            out.setdefault(tag.removeprefix("train/"), {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return out


def run_logged(argv: list[str], work: Path, env: dict[str, str]) -> str:
    work.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    (work / f"run{len(list(work.glob('run*.log')))}.log").write_text(log)
    assert result.returncode == 0, f"run failed (rc={result.returncode}); log tail:\n{log[-6000:]}"
    return log


@pytest.mark.e2e
def test_patched_openrlhf_trains_saves_and_resumes_with_its_own_hooks(trees, e2e_env, tmp_path):
    """Sync run through OpenRLHF's own ``train_ppo_ray`` (unequal groups, two rounds), then an
    async resume through our launcher with OPENRLHF_CERO_RUNTIME_HOOKS=0."""
    from openrlhf_cero.cpu.tiny import build, smoke_flags

    assets = build(tmp_path / "assets", prompts=64, seed=0)
    work = tmp_path / "work"
    flags = smoke_flags(assets, work, **{"logger.tensorboard_dir": work / "tb"})
    driver = (
        "import runpy, sys, ray\n"
        "from openrlhf_cero import cpu\n"
        "cpu.install(); ray.init(**cpu.ray_init_kwargs())\n"
        "import openrlhf; assert openrlhf.__file__.startswith(sys.argv[1]), openrlhf.__file__\n"
        "sys.argv = ['train_ppo_ray', *sys.argv[2:]]\n"
        "runpy.run_module('openrlhf.cli.train_ppo_ray', run_name='__main__')\n"
    )
    native_flags = ["--rollout.allocator", "unequal_test", "--rollout.allocator_kwargs", '{"extra_round": true}']
    run_logged([sys.executable, "-c", driver, str(trees.patched), *flags, *native_flags], work, e2e_env)
    first = scalars(work / "tb")
    assert first["rollout/num_samples"] == {1: 16.0, 2: 16.0}
    assert first["allocator/samples_per_prompt_min"] == {1: 2.0, 2: 2.0}
    assert first["allocator/samples_per_prompt_max"] == {1: 6.0, 2: 6.0}
    assert first["allocator/rollouts_drawn_total"] == {1: 16.0, 2: 32.0}
    assert "allocator/cycles" not in first  # a figure only the plugin's generator logs
    saved = torch.load(work / "ckpt/_actor/global_step2/mp_rank_00_model_states.pt", weights_only=False)
    assert saved["rollout_allocator"]["allocator"] == "unequal_test" and saved["rollout_allocator"]["steps"] == 2
    assert "rollout_allocator" not in saved["data_loader_state_dict"]  # where the plugin would put it

    resume = smoke_flags(
        assets, work, **{"logger.tensorboard_dir": work / "tb_resumed", "train.num_episodes": 2, "train.async_enable": True}
    )
    log = run_logged(
        [sys.executable, "-m", "openrlhf_cero.cli.train_ppo_ray", *resume, "--rollout_allocator", "unequal_test",
         "--allocator.unequal_test.extra_round", "true", "--ckpt.load_enable"],
        work,
        e2e_env,
    )
    resumed = scalars(work / "tb_resumed")
    # OpenRLHF's own actor classes ran (Ray prefixes their log lines), none of the plugin's.
    assert "(GenerateSamplesActor pid=" in log and "(TrainingActor pid=" in log and "_Allocating" not in log
    assert "allocator/cycles" not in resumed
    assert resumed["allocator/rollouts_drawn_total"] == {3: 48.0, 4: 64.0}  # state restored from step 2
    assert resumed["allocator/samples_per_prompt_max"] == {3: 6.0, 4: 6.0}
    final = torch.load(work / "ckpt/_actor/global_step4/mp_rank_00_model_states.pt", weights_only=False)
    assert final["rollout_allocator"]["steps"] == 4
