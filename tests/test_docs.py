"""The user documentation against the code: docs/flags.md is what the parser generates,
every command line in the docs passes OpenRLHF's checks and ours, every Python example
runs, every flag named exists, docs/metrics.md lists exactly the metrics the allocators
emit, and the simulator figures quoted in the README and the docs are those of docs/benchmarks.md.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from openrlhf_cero.allocators import create_allocator
from openrlhf_cero.allocators.registry import available_allocators
from openrlhf_cero.allocators.step_loop import run_step
from openrlhf_cero.cli import docs as docs_cli
from openrlhf_cero.cli.train_ppo_ray import main as train_ppo_ray

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
USER_DOCS = ("quickstart.md", "choosing.md", "faq.md", "metrics.md")
TRAIN_MODULE = "openrlhf_cero.cli.train_ppo_ray"


def code_blocks(lang: str) -> list[tuple[str, str]]:
    blocks = []
    for name in USER_DOCS:
        text = (DOCS / name).read_text(encoding="utf-8")
        blocks += [(name, m.group(1)) for m in re.finditer(rf"```{lang}\n(.*?)```", text, re.S)]
    return blocks


def shell_commands() -> list[tuple[str, str]]:
    """Each command of every bash block, continuation lines joined."""
    out = []
    for name, block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append((name, line))
    return out


def split_env(command: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def commands_of(kind: str) -> list[tuple[str, str]]:
    found = []
    for name, command in shell_commands():
        _, words = split_env(command)
        if kind == "train" and TRAIN_MODULE in words:
            found.append((name, command))
        elif kind == "recipe" and words and words[0].startswith("recipes/"):
            found.append((name, command))
    return found


@pytest.fixture(scope="module")
def parser():
    return docs_cli.trainer_parser()


def test_flags_doc_is_what_the_parser_generates(parser):
    assert (DOCS / "flags.md").read_text(encoding="utf-8") == docs_cli.render(parser), (
        "docs/flags.md is out of date: run python -m openrlhf_cero.cli.docs"
    )


def test_flags_doc_lists_every_allocator_option(parser):
    text = (DOCS / "flags.md").read_text(encoding="utf-8")
    for action in parser._actions:
        if action.option_strings and action.option_strings[0].startswith("--allocator.") and action.help != "==SUPPRESS==":
            assert f"`{action.option_strings[0]}`" in text


def test_every_flag_named_in_the_docs_exists(parser):
    known = {option for action in parser._actions for option in action.option_strings}
    pattern = re.compile(r"(?<![\w-])--(?:[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+|rollout_allocator|dry_run)\b")
    sources = [DOCS / name for name in USER_DOCS] + sorted((REPO / "recipes").glob("*.sh"))
    unknown = {
        (path.name, flag)
        for path in sources
        for flag in pattern.findall(path.read_text(encoding="utf-8"))
        if flag not in known and not flag.startswith("--allocator.<")
    }
    assert not unknown, sorted(unknown)


@pytest.mark.parametrize("doc, command", commands_of("train"), ids=lambda v: v if v.endswith(".md") else None)
def test_train_commands_in_the_docs_pass_the_dry_run(doc, command, capsys):
    _, words = split_env(command)
    args = words[words.index(TRAIN_MODULE) + 1 :]
    train_ppo_ray(args if "--dry_run" in args else [*args, "--dry_run"])
    assert "dry run: flags are valid" in capsys.readouterr().out


@pytest.mark.parametrize("doc, command", commands_of("recipe"), ids=lambda v: v if v.endswith(".md") else None)
def test_recipe_commands_in_the_docs_pass_the_dry_run(doc, command, capsys):
    env, words = split_env(command)
    script = REPO / words[0]
    assert script.is_file(), f"{doc}: {words[0]} does not exist"
    if script.name == "cpu_smoke.sh":
        return  # run for real by tests/test_recipes.py (e2e)
    result = subprocess.run(
        ["bash", str(script), *words[1:]],
        env={**os.environ, **env, "PRINT_FLAGS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    train_ppo_ray([*result.stdout.splitlines(), "--dry_run"])
    assert "dry run: flags are valid" in capsys.readouterr().out


def test_docs_have_commands_of_both_kinds():
    assert commands_of("train") and commands_of("recipe")


def test_other_repo_paths_in_doc_commands_exist():
    for doc, command in shell_commands():
        _, words = split_env(command)
        for word in words:
            if re.fullmatch(r"(scripts|recipes)/[\w./-]+", word):
                assert (REPO / word).exists(), f"{doc}: {word}"


@pytest.mark.parametrize("doc, source", code_blocks("python"), ids=lambda v: v if v.endswith(".md") else None)
def test_python_examples_in_the_docs_run(doc, source):
    exec(compile(source, f"{doc} example", "exec"), {"__name__": "doc_example"})


def test_global_budget_mode_runs_in_training_as_the_faq_says(capsys):
    """The recipe's flags with CERO's global budget mode pass the dry run; with dynamic
    filtering they are refused, naming both flags (docs/faq.md)."""
    flags = subprocess.run(
        ["bash", str(REPO / "recipes" / "grpo_math.sh"), "cero"],
        env={**os.environ, "PRINT_FLAGS": "1"}, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    global_mode = ["--allocator.cero.budget_mode", "global"]
    faq = (REPO / "docs" / "faq.md").read_text()
    assert "### Does CERO's global budget mode run in training?" in faq
    train_ppo_ray([*flags, *global_mode, "--dry_run"])
    with pytest.raises(SystemExit) as exit_info:
        train_ppo_ray([*flags, *global_mode, "--algo.dynamic_filtering_enable", "--dry_run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "budget_mode global" in err and "--algo.dynamic_filtering_enable" in err


# ── docs/metrics.md against what the allocators emit ──


def emitted_metrics(allocator, steps: int = 3, prompts: int = 768, batch: int = 32) -> set[str]:
    """Metric names over a few steps of the shared step loop, with Beta-distributed pass rates."""
    rng = np.random.default_rng(1)
    pass_rate = rng.beta(0.35, 0.68, size=prompts)
    order = iter(np.tile(np.arange(prompts // 2), 2))  # two epochs over half the pool: revisits

    def take(k):
        ids = [int(i) for _, i in zip(range(k), order)]
        return np.array(ids, dtype=np.uint64), ids

    def draw(handles, counts):
        return [([None] * int(c), rng.binomial(1, pass_rate[h], size=int(c)).astype(float)) for h, c in zip(handles, counts)]

    names: set[str] = set()
    for _ in range(steps):
        run_step(allocator, batch * allocator.n_samples_per_prompt, take, draw)
        names |= set(allocator.metrics())
    return names


def generator_metrics() -> set[str]:
    source = (REPO / "openrlhf_cero" / "openrlhf" / "generator.py").read_text(encoding="utf-8")
    return set(re.findall(r'metrics\["allocator/([a-z0-9_]+)"\]', source))


def test_metrics_doc_lists_exactly_the_emitted_metrics():
    emitted = generator_metrics()
    assert {"cycles", "groups_filtered"} <= emitted
    for name in available_allocators():
        emitted |= emitted_metrics(create_allocator(name, n_samples_per_prompt=8, seed=0))
    global_cero = create_allocator(
        "cero", n_samples_per_prompt=8, seed=0, budget_mode="global", global_budget=3 * 256, global_steps=3
    )
    emitted |= emitted_metrics(global_cero)
    documented = set(re.findall(r"`allocator/([a-z0-9_]+)`", (DOCS / "metrics.md").read_text(encoding="utf-8")))
    assert emitted - documented == set(), "emitted but not documented"
    assert documented - emitted == set(), "documented but never emitted"


# ── docs/choosing.md quotes docs/benchmarks.md ──


def benchmark_rows(scenario: str) -> dict[str, list[str]]:
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    section = text.split(f"## Scenario `{scenario}`", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0] and not cells[0].startswith(("allocator", "---")):
            rows[cells[0]] = cells
    return rows


def test_choosing_quotes_the_benchmark_figures():
    text = (DOCS / "choosing.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if re.match(r"\| `(deepscaler|hard|easy)`", line)]
    assert len(lines) == 3
    columns = ["uniform", "cero", "pilot_commit", "vip", "oracle"]
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        scenario = re.match(r"`(\w+)`", cells[0]).group(1)
        rows = benchmark_rows(scenario)
        quoted = dict(zip(columns, cells[1:]))
        assert quoted["uniform"] == rows["uniform"][1], scenario
        for allocator in columns[1:]:
            if allocator not in rows:
                assert quoted[allocator] == "failed", (scenario, allocator)
                continue
            speedup = float(rows[allocator][2].split("±")[0])
            assert quoted[allocator] == f"{speedup:.2f}x", (scenario, allocator)


# ── every doc that quotes a simulator figure quotes docs/benchmarks.md ──

# A quoted figure is followed by a marker naming its cell of docs/benchmarks.md, e.g.
# ``1.21x<!-- bench deepscaler vip vs-uniform -->``; the marker is invisible when rendered.
QUOTING_DOCS = (
    "README.md", "docs/choosing.md", "docs/cero.md", "docs/vip.md", "docs/pilot_commit.md", "docs/upstreaming.md",
    "docs/simulator.md",
)
BENCH_COLUMNS = {"rollouts": 1, "vs-uniform": 2, "vs-best": 3, "effective": 4}
QUOTE = re.compile(
    r"(?P<figure>[0-9][0-9.,]*(?: ± [0-9.,]+)?)(?:x|×)?(?:\*\*)?\s*"
    r"<!-- bench (?P<scenario>\w+) (?P<entry>\w+) (?P<column>[\w-]+) -->"
)


def quoted_figures(doc: str) -> list[re.Match]:
    return list(QUOTE.finditer((REPO / doc).read_text(encoding="utf-8")))


@pytest.mark.parametrize("doc", QUOTING_DOCS)
def test_quoted_simulator_figures_are_those_of_the_benchmarks_doc(doc):
    """A regenerated docs/benchmarks.md with other numbers fails here until every quote follows it:
    a quote with its SD must equal the cell, a bare quote its mean."""
    quotes = quoted_figures(doc)
    assert quotes, f"{doc} quotes no marked simulator figure"
    markers = (REPO / doc).read_text(encoding="utf-8").count("<!-- bench ")
    assert markers == len(quotes), f"{doc}: {markers - len(quotes)} marker(s) not right after a figure"
    rows = {}
    for quote in quotes:
        scenario, entry, column = quote["scenario"], quote["entry"], quote["column"]
        assert column in BENCH_COLUMNS, f"{doc}: unknown column {column!r}; known: {', '.join(BENCH_COLUMNS)}"
        if scenario not in rows:
            rows[scenario] = benchmark_rows(scenario)
        assert entry in rows[scenario], f"{doc}: no row {entry!r} in scenario {scenario!r} of docs/benchmarks.md"
        cell = rows[scenario][entry][BENCH_COLUMNS[column]]
        expected = cell if "±" in quote["figure"] else cell.split(" ±")[0]
        assert quote["figure"] == expected, f"{doc} quotes {quote['figure']} for {scenario}/{entry}/{column}; " \
            f"docs/benchmarks.md has {cell}"


def test_quote_markers_are_recognised():
    """The marker grammar itself: figure forms the docs use, and a wrong figure is caught."""
    text = "is 1.21x<!-- bench deepscaler vip vs-uniform --> and **1.43x**<!-- bench hard cero vs-best --> " \
        "and 312,841 ± 27,010<!-- bench deepscaler uniform rollouts -->"
    found = [(m["figure"], m["scenario"], m["entry"], m["column"]) for m in QUOTE.finditer(text)]
    assert found == [
        ("1.21", "deepscaler", "vip", "vs-uniform"),
        ("1.43", "hard", "cero", "vs-best"),
        ("312,841 ± 27,010", "deepscaler", "uniform", "rollouts"),
    ]


def test_a_regenerated_benchmarks_doc_with_other_figures_fails_the_quotes(tmp_path, monkeypatch):
    """The check follows docs/benchmarks.md: change one quoted cell there and a doc quoting it fails."""
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    cell = benchmark_rows("deepscaler")["cero"][BENCH_COLUMNS["vs-uniform"]]
    mean, sd = cell.split(" ± ")
    changed = f"{float(mean) + 0.01:.2f} ± {sd}"
    head, section = text.split("## Scenario `deepscaler`", 1)
    row = next(line for line in section.splitlines() if line.startswith("| cero |"))
    section = section.replace(row, row.replace(cell, changed, 1), 1)
    (tmp_path / "benchmarks.md").write_text(head + "## Scenario `deepscaler`" + section, encoding="utf-8")
    monkeypatch.setitem(globals(), "DOCS", tmp_path)  # benchmark_rows reads the module's DOCS
    with pytest.raises(AssertionError, match="deepscaler/cero/vs-uniform"):
        test_quoted_simulator_figures_are_those_of_the_benchmarks_doc("README.md")


def test_python_example_in_the_readme_runs():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for source in blocks:
        exec(compile(source, "README.md", "exec"), {})


def test_docs_cite_only_what_the_repository_or_the_public_has():
    """Docs and code cite papers (docs/sources.md) and the project's own docs, never a
    design file that is not in the repository."""
    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "openrlhf_cero").rglob("*.py"))]
    citing = [str(f.relative_to(root)) for f in files if re.search(r"\bDESIGN(\.md| §| section| \d)", f.read_text())]
    assert not citing
    assert (root / "docs" / "sources.md").is_file()
