"""benchmarks/tune_defaults.py, the sweep behind the tuning tables of docs/cero.md, vip.md and
pilot_commit.md: every setting of its grids builds its allocator, the criterion ranks as the
docs say, and "default" is the code's defaults."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from openrlhf_cero.allocators import create_allocator
from openrlhf_cero.sim.summary import Stat

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tune_defaults.py"


def load_script():
    spec = importlib.util.spec_from_file_location("tune_defaults", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TUNE = load_script()


@pytest.mark.parametrize("allocator", sorted(TUNE.GRIDS))
def test_every_setting_of_the_grid_builds_its_allocator(allocator):
    grid = TUNE.GRIDS[allocator]
    assert grid["default"] == {}
    for label, options in grid.items():
        alloc = create_allocator(allocator, n_samples_per_prompt=8, min_samples=2, max_samples=32, seed=0, **options)
        for name, value in options.items():
            assert getattr(alloc, name) == value, (label, name)


def test_rank_score_is_the_headline_mean_and_excludes_a_slower_easy_or_a_missed_target():
    def s(mean: float, reached: int = 3) -> Stat:
        return Stat(mean, 0.01, reached, 3)

    assert TUNE.rank_score({"deepscaler": s(2.0), "hard": s(2.5), "easy": s(1.2)}) == pytest.approx(2.25)
    assert TUNE.rank_score({"deepscaler": s(2.0), "hard": s(2.5), "easy": s(0.99)}) == -math.inf
    assert TUNE.rank_score({"deepscaler": s(2.0), "hard": s(2.5, reached=2), "easy": s(1.2)}) == -math.inf


def test_unknown_setting_is_refused_with_the_known_ones(capsys):
    assert TUNE.main(["--allocator", "vip", "--settings", "no such setting"]) == 2
    err = capsys.readouterr().err
    assert "no such setting" in err and "prior_logit -1, noise 0.5" in err
