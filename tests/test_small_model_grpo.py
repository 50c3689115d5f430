"""The pieces of benchmarks/small_model/: task checker, group_norm on groups of any size, the
policy-gradient step, GRPO steps through the shared run_step loop (tiny CPU settings), the
statistics of the report, and the page's tables against the committed results."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from openrlhf_cero.allocators.step_loop import run_step
from openrlhf_cero.allocators import create_allocator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `benchmarks.small_model` is imported from the repository root


@pytest.fixture(scope="module")
def g():
    """Every module of the package in one namespace (the tests predate the split)."""
    from benchmarks.small_model import config, grpo, model, page, report, report_scheduler, runs, task, warmup

    merged = types.SimpleNamespace()
    for module in (task, model, config, warmup, grpo, runs, report, report_scheduler, page):
        for name, value in vars(module).items():
            if not name.startswith("__"):
                setattr(merged, name, value)
    torch.set_num_threads(1)
    return merged


# ── task ──


def test_expected_answer_is_python_arithmetic_reversed(g):
    rng = np.random.default_rng(0)
    for _ in range(500):
        prompt = g.random_problem(rng)
        a, op, b = (prompt[:-1].partition("+") if "+" in prompt else prompt[:-1].partition("*"))
        truth = int(a) + int(b) if op == "+" else int(a) * int(b)
        assert g.expected_answer(prompt) == str(truth)[::-1]
        assert g.check_answer(prompt, str(truth)[::-1])
        assert not g.check_answer(prompt, str(truth + 1)[::-1])
        assert not g.check_answer(prompt, str(truth)[::-1] + "0")  # an extra digit is wrong


def test_problems_cover_every_bucket_with_the_right_operand_sizes(g):
    rng = np.random.default_rng(1)
    seen = {g.bucket_of(g.random_problem(rng)) for _ in range(2000)}
    assert seen == set(range(len(g.BUCKETS)))


def test_vectorised_score_agrees_with_the_string_checker(g):
    rng = np.random.default_rng(2)
    prompts = [g.random_problem(rng) for _ in range(300)]
    targets = g.encode_answers(prompts)
    completions = targets.clone()
    kind = rng.integers(0, 4, size=len(prompts))
    for row, k in enumerate(kind):
        length = int((targets[row] != g.PAD).sum())  # answer digits + EOS
        if k == 1:  # one digit changed
            completions[row, 0] = g.TOKEN_OF[str((int(g.CHAR_OF[int(targets[row, 0])]) + 1) % 10)]
        elif k == 2:  # no EOS: the answer runs on
            completions[row, length - 1] = g.TOKEN_OF["7"]
        elif k == 3:  # random tokens
            completions[row] = torch.as_tensor(rng.integers(2, g.VOCAB, size=g.ANSWER_WIDTH))
    fast = g.score(completions, targets).numpy()
    slow = [g.check_answer(p, g.decode_completion(c.tolist())) for p, c in zip(prompts, completions)]
    np.testing.assert_array_equal(fast.astype(bool), np.array(slow))
    assert fast[kind == 0].all() and not fast[(kind == 1) | (kind == 2)].any()


def test_datasets_are_disjoint_distinct_and_reproducible(g):
    train, held_out = g.build_datasets(3, 300, 100)
    assert len(set(train.texts)) == 300 and len(set(held_out.texts)) == 100
    assert not set(train.texts) & set(held_out.texts)
    again, _ = g.build_datasets(3, 300, 100)
    assert again.texts == train.texts and (again.ids == train.ids).all()


def test_rl_prompts_are_a_bucket_filtered_prefix_of_the_warm_up_datasets(g):
    """One warm-up serves any choice of RL prompts, and the held-out prompts stay ones it never saw."""
    train, held_out = g.build_datasets(5, 400, 200, "+22,+33,*12")
    rl_train, rl_held = g.rl_datasets(5, 400, 200, "+22,+33,*12", "+33,*12", 50)
    keep = {g.BUCKET_NAMES.index("+33"), g.BUCKET_NAMES.index("*12")}
    want_train = [t for t, b in zip(train.texts, train.buckets) if b in keep][:50]
    assert rl_train.texts == want_train and set(rl_train.buckets) <= keep
    assert rl_held.texts == [t for t, b in zip(held_out.texts, held_out.buckets) if b in keep]
    assert not set(rl_train.texts) & set(held_out.texts)
    with pytest.raises(ValueError):
        g.bucket_indices("+55")


def test_auto_rl_buckets_keep_the_buckets_left_in_between(g):
    by_bucket = {"+13": 0.098, "+22": 0.915, "+23": 0.01, "+33": 0.476, "*12": 0.236, "+41": 0.979}
    assert g.auto_rl_buckets(by_bucket) == "+13,+33,*12"
    with pytest.raises(SystemExit):
        g.auto_rl_buckets({"+22": 0.99})


# ── advantages ──


def test_group_norm_matches_numpy_per_group_for_unequal_groups(g):
    rng = np.random.default_rng(4)
    sizes = rng.integers(1, 12, size=40)
    groups = [rng.integers(0, 2, size=s).astype(float) for s in sizes]
    groups[0] = np.ones(sizes[0])  # all correct: zero variance
    got = g.group_norm_advantages(np.concatenate(groups), sizes)
    want = []
    for r in groups:
        if r.size == 1:
            want.append(np.zeros(1))
        else:
            want.append((r - r.mean()) / (np.std(r, ddof=1) + 1e-9))
    np.testing.assert_allclose(got, np.concatenate(want), atol=1e-12)
    np.testing.assert_array_equal(got[: sizes[0]], 0.0)


def test_group_norm_is_not_one_normalisation_over_the_batch(g):
    """Groups [1,1,0,0] and [1,0] ... each centred on its own mean, not on the batch mean."""
    rewards = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    adv = g.group_norm_advantages(rewards, np.array([4, 2]))
    assert adv[:4].sum() == pytest.approx(0, abs=1e-9) and adv[4:].sum() == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError):
        g.group_norm_advantages(rewards, np.array([4, 3]))


# ── model, sampling, update ──


def test_left_padding_does_not_change_the_prediction(g):
    torch.manual_seed(0)
    model = g.TinyDecoder(32, 2, 2).eval()
    prompts = ["3+4=", "1234*5=", "99+1=", "12*34="]
    tokens, mask = g.encode_prompts(prompts)
    with torch.no_grad():
        batch = model(tokens, mask)[:, -1]
        for row in range(len(prompts)):
            alone = tokens[row : row + 1, mask[row]]  # this row without its left padding
            single = model(alone, torch.ones_like(alone, dtype=torch.bool))[:, -1]
            torch.testing.assert_close(single[0], batch[row], atol=1e-5, rtol=1e-5)


def test_cached_sampling_equals_sampling_with_the_full_forward(g):
    """The key/value cache is an optimisation only: same generator, same completions."""
    torch.manual_seed(0)
    model = g.TinyDecoder(32, 2, 2).eval()
    data = g.make_prompt_set([g.random_problem(np.random.default_rng(i)) for i in range(48)])

    def full(gen: torch.Generator) -> torch.Tensor:
        tokens, valid = data.tokens, data.mask
        done = torch.zeros(tokens.shape[0], dtype=torch.bool)
        out = []
        for _ in range(g.ANSWER_WIDTH):
            probs = torch.softmax(model(tokens, valid)[:, -1].float(), -1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1).masked_fill(done, g.PAD)
            out.append(nxt)
            tokens, valid = torch.cat([tokens, nxt[:, None]], 1), torch.cat([valid, ~done[:, None]], 1)
            done = done | (nxt == g.EOS)
        return torch.stack(out, 1)

    with torch.no_grad():
        want = full(torch.Generator().manual_seed(3))
    got = g.generate(model, data.tokens, data.mask, greedy=False, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want)


def test_generation_ends_at_eos_and_never_emits_pad_or_bos_before(g):
    torch.manual_seed(0)
    model = g.TinyDecoder(32, 1, 2)
    data = g.make_prompt_set([g.random_problem(np.random.default_rng(i)) for i in range(64)])
    out = g.generate(model, data.tokens, data.mask, greedy=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, g.ANSWER_WIDTH)
    for row in out.tolist():
        end = row.index(g.EOS) + 1 if g.EOS in row else len(row)
        assert g.PAD not in row[:end] and g.BOS not in row[:end]
        assert all(t == g.PAD for t in row[end:])


def test_policy_gradient_step_raises_the_rewarded_completions(g):
    torch.manual_seed(0)
    model = g.TinyDecoder(32, 1, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = g.make_prompt_set(["12+34="] * 16)
    completions = g.generate(model, data.tokens, data.mask, greedy=False, generator=torch.Generator().manual_seed(1))
    rewards = np.tile([1.0, 0.0], 8)
    adv = torch.as_tensor(g.group_norm_advantages(rewards, np.array([16])), dtype=torch.float32)

    def gap() -> float:
        logp, _ = g.completion_logprobs(model, data.tokens, data.mask, completions)
        seq = logp.sum(1)
        return float((seq[rewards == 1].mean() - seq[rewards == 0].mean()).detach())

    before = gap()
    logp, counted = g.completion_logprobs(model, data.tokens, data.mask, completions)
    opt.zero_grad()
    g.policy_gradient_loss(logp, counted, adv).backward()
    opt.step()
    assert gap() > before


def _tiny_config(g, **over):
    settings = dict(g.SMOKE)
    settings.update(over)
    return g.Config(**settings)


@pytest.mark.parametrize("name", ["uniform", "dynamic_filtering", "oversample_even", "beta_greedy", "cero", "vip",
                                  "pilot_commit"])
def test_grpo_steps_run_through_run_step_and_count_every_rollout(g, name):
    # An untrained policy solves nothing: Pilot-Commit's band opens at 0 so its pilots can commit.
    cfg = _tiny_config(g, total_rollouts=64, eval_every=32, batch_prompts=4, n=8,
                       allocator_options={"pilot_commit": {"band_low": 0.0},
                                          # nothing is solved yet: all-wrong groups pass, all-right ones never occur
                                          "dynamic_filtering": {"low": -1.0}})
    train, held_out = g.build_datasets(cfg.data_seed, cfg.train_size, cfg.eval_size)
    torch.manual_seed(0)
    state = g.build_model(cfg, torch.device("cpu")).state_dict()
    record = g.run_allocator(cfg, name, 0, state)
    steps = record["steps"]
    assert record["done"] and steps
    assert record["evals"][-1]["rollouts"] == sum(s["drawn"] for s in steps) >= cfg.total_rollouts
    for s in steps:
        assert s["trained"] <= s["drawn"]
    assert record["optimizer_steps"] == sum(1 for s in steps if s["groups"]) == record["evals"][-1]["step"]
    assert record["settings"]["n_samples_per_prompt"] == cfg.n  # the resolved settings are recorded
    if name == "pilot_commit":  # pilots of skipped (too easy) prompts are drawn, never trained
        assert all(s["trained"] % cfg.n == 0 for s in steps)
    elif name == "dynamic_filtering":  # its accept_group is the step loop's accept: groups of n fill the step
        assert record["settings"]["low"] == -1.0
        assert all(s["groups"] == cfg.batch_prompts and s["trained"] <= s["drawn"] for s in steps)
    else:  # one-shot allocators spend the budget exactly
        assert all(s["drawn"] == s["trained"] == cfg.n * cfg.batch_prompts for s in steps)


def test_drawer_hands_back_per_prompt_rows_that_gather_the_same_completions(g):
    torch.manual_seed(0)
    train, _ = g.build_datasets(0, 40, 10)
    model = g.TinyDecoder(32, 1, 2)
    drawer = g.RolloutDrawer(model, train, torch.Generator().manual_seed(0))
    alloc = create_allocator("uniform", n_samples_per_prompt=4)
    handles = list(range(6))
    outcome = run_step(alloc, 24, lambda k: (train.ids[handles[:k]], handles[:k]), drawer)
    assert [len(grp.samples) for grp in outcome.groups] == [4] * 6
    for grp in outcome.groups:
        prompt_rows, completions = drawer.gather(np.asarray(grp.samples))
        assert (prompt_rows == grp.handle).all()
        np.testing.assert_array_equal(g.score(completions, train.targets[prompt_rows]).numpy(), grp.rewards)


# ── summary ──


def test_rollouts_to_target_inverts_the_interpolated_curve(g):
    x = np.array([0.0, 100.0, 200.0, 300.0])
    y = np.array([0.2, 0.3, 0.5, 0.45])
    for target in (0.25, 0.3, 0.4, 0.5):
        at = g.rollouts_to_target(x, y, target)
        assert np.interp(at, x[:3], y[:3]) == pytest.approx(target)
    assert np.isnan(g.rollouts_to_target(x, y, 0.6))


def _fake_run(name: str, seed: int, x: np.ndarray, y: np.ndarray, steps_per_eval: int = 10) -> dict:
    evals = [{"rollouts": float(a), "step": i * steps_per_eval, "held_out": float(b), "train": float(b)}
             for i, (a, b) in enumerate(zip(x, y))]
    steps = [{"zero_variance_share": 0.5, "mixed_rollouts": 1, "drawn": 2, "allocator_seconds": 0.001}]
    return {"allocator": name, "seed": seed, "evals": evals, "steps": steps, "wall_seconds": 1.0,
            "optimizer_steps": steps_per_eval * (len(x) - 1)}


def test_speedup_is_uniform_rollouts_over_the_allocators_at_the_same_target(g):
    x = np.linspace(0, 1000, 21)
    y = 0.3 + 0.4 * (1 - np.exp(-x / 300))
    runs = {"uniform/0": _fake_run("uniform", 0, x, y), "fast/0": _fake_run("fast", 0, x, np.interp(2 * x, x, y))}
    summary = g.summarise({"runs": runs}, metric="train", gain_share=0.5)
    assert summary["has_target"]
    assert summary["target"] == pytest.approx(0.3 + 0.5 * (y[-1] - 0.3))
    want = g.rollouts_to_target(x, y, summary["target"])
    assert summary["allocators"]["uniform"]["per_seed"][0]["to_target"] == pytest.approx(want)
    # The fast curve is uniform's at twice the rollouts (up to interpolation between evaluations).
    assert summary["allocators"]["fast"]["speedup"][0] == pytest.approx(2.0, rel=0.05)


def test_no_target_when_uniform_does_not_rise_above_the_evaluation_noise(g):
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1000, 21)
    runs = {f"{name}/{seed}": _fake_run(name, seed, x, 0.4 + 0.01 * rng.standard_normal(x.size))
            for name in ("uniform", "other") for seed in range(4)}
    summary = g.summarise({"runs": runs}, metric="train")
    assert not summary["has_target"] and np.isnan(summary["target"])
    text = g.markdown_report({"runs": runs})
    assert "no rollouts-to-target is reported" in text and "| speed-up vs uniform" not in text


def test_paired_differences_and_their_t_intervals(g):
    x = np.linspace(0, 1000, 11)
    runs = {}
    for seed, shift in enumerate([0.00, 0.02, -0.01, 0.01]):
        base = 0.3 + 0.2 * x / 1000 + shift
        runs[f"uniform/{seed}"] = _fake_run("uniform", seed, x, base)
        runs[f"better/{seed}"] = _fake_run("better", seed, x, base + 0.05 + 0.001 * seed)
    row = g.summarise({"runs": runs}, metric="train")["allocators"]["better"]
    diffs = 0.05 + 0.001 * np.arange(4)
    mean, low, high, count = row["final_diff"]
    half = __import__("scipy").stats.t.ppf(0.975, 3) * diffs.std(ddof=1) / 2
    assert count == 4 and mean == pytest.approx(diffs.mean()) and high - mean == pytest.approx(half)
    assert g.excludes(low, high, 0.0) == "yes" and g.excludes(-0.1, 0.1, 0.0) == "no"
    # The mean over the run (AUC) of a straight line is its value at the middle.
    assert row["auc"][0] == pytest.approx(np.mean([0.4 + s + 0.05 + 0.001 * i for i, s in enumerate([0, .02, -.01, .01])]))


def test_the_page_shows_the_tables_that_the_report_prints_from_the_committed_results(g):
    """docs/benchmarks-small-model.md cannot drift from docs/results/: its tables are the report's output."""
    import json

    page = (ROOT / "docs" / "benchmarks-small-model.md").read_text(encoding="utf-8")
    results = json.loads((ROOT / "docs" / "results" / "small_model_cpu.json").read_text())
    sweep = [json.loads(p.read_text()) for p in sorted((ROOT / "docs" / "results").glob("small_model_cpu_lr_*.json"))]
    scheduled_path = ROOT / "docs" / "results" / "small_model_cpu_cbs.json"  # the scheduler entries, once run
    scheduled = json.loads(scheduled_path.read_text()) if scheduled_path.exists() else None
    buffers = [json.loads(p.read_text()) for p in sorted((ROOT / "docs" / "results").glob("small_model_cpu_cbs_buffer_*.json"))]
    ablation_path = ROOT / "docs" / "results" / "small_model_cpu_cbs_ablation.json"  # CBS with ranking=advantage
    ablation = json.loads(ablation_path.read_text()) if ablation_path.exists() and scheduled else None
    blocks = g.page_blocks(results, sweep, scheduled=scheduled, buffer_sweep=buffers if scheduled else (),
                           ablation=ablation)
    assert scheduled is None or "scheduler" in blocks
    for name, text in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        assert begin in page and end in page, f"the page has no {name} block"
        shown = page.split(begin, 1)[1].split(end, 1)[0].strip()
        assert shown == text.strip(), f"the page's {name} block differs from what --report prints"


def test_compacted_results_give_the_same_report(g):
    x = np.linspace(0, 1000, 11)
    runs = {}
    for seed in range(3):
        for name, lift in (("uniform", 0.0), ("other", 0.02)):
            run = _fake_run(name, seed, x, 0.3 + 0.2 * x / 1000 + lift + 0.01 * seed)
            run["steps"] = [{"rollouts": 100 * (i + 1), "drawn": 100, "trained": 100, "groups": 10, "mixed_groups": 4,
                             "mixed_rollouts": 40, "zero_variance_share": 0.6, "cycles": 1, "mean_reward": 0.5,
                             "allocator_seconds": 0.001, "epoch": 0, "loss": 0.1} for i in range(10)]
            runs[f"{name}/{seed}"] = run
    results = {"runs": runs}
    small = g.compact(results)
    assert isinstance(small["runs"]["uniform/0"]["steps"], dict) and "loss" not in small["runs"]["uniform/0"]["steps"]
    assert g.markdown_report(small) == g.markdown_report(results)


def test_results_of_other_settings_are_not_merged(g):
    a = {"config": {"lr": 1e-3, "deadline": 1}, "runs": {"uniform/0": {}}}
    b = {"config": {"lr": 1e-3, "deadline": 2}, "runs": {"uniform/1": {}}}
    assert set(g.merge_results([a, b])["runs"]) == {"uniform/0", "uniform/1"}
    with pytest.raises(SystemExit):
        g.merge_results([a, {"config": {"lr": 5e-4}, "runs": {"uniform/2": {}}}])
    with pytest.raises(SystemExit):
        g.merge_results([a, a])


def test_ablation_table_pairs_the_rule_with_the_bandit_by_seed(g):
    """CBS's no-learning ablation (ranking=advantage) is compared with uniform and with the
    bandit, seed by seed; runs of the wrong ranking are refused rather than mislabelled."""
    x = np.linspace(0, 1000, 11)

    def runs_of(name: str, lift: float, ranking: str | None = None) -> dict:
        out = {}
        for seed in range(4):
            run = _fake_run(name, seed, x, 0.3 + 0.2 * x / 1000 + lift + 0.01 * seed + 0.001 * seed * (lift > 0))
            run["steps"] = [dict(run["steps"][0], scheduler_reuse_share=0.25)]
            if ranking:
                run["scheduler"] = {"name": "cbs", "ranking": ranking}
            out[f"{name}/{seed}"] = run
        return {"runs": out}

    main, bandit = runs_of("uniform", 0.0), runs_of("uniform+cbs", 0.02)
    ablation = runs_of("uniform+cbs", 0.05, "advantage")
    rows = g.ablation_table(main, bandit, ablation).splitlines()
    assert [r.split(" | ")[0] for r in rows[2:]] == ["| bandit vs uniform", "| advantage vs uniform",
                                                      "| advantage vs bandit"]
    assert rows[-1].split(" | ")[2].startswith("+0.030")  # train accuracy: 0.05 - 0.02 on every seed
    with pytest.raises(ValueError, match="ranking"):
        g.ablation_table(main, bandit, runs_of("uniform+cbs", 0.05, "bandit"))
    with pytest.raises(ValueError, match="ranking"):
        g.ablation_table(main, ablation, ablation)
