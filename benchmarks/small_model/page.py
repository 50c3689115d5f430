"""The generated blocks of docs/benchmarks-small-model.md and how they are written into the page.

A test checks that the page's blocks equal what :func:`page_blocks` prints from the committed
results, so the page cannot drift from them.
"""

from __future__ import annotations

from typing import Sequence

from benchmarks.small_model.report import finished_runs, markdown_report, settings_table, sweep_table, warmup_table
from benchmarks.small_model.report_scheduler import ablation_table, buffer_sweep_table, scheduler_report


def page_blocks(
    results: dict, sweep: Sequence[dict], gain_share: float = 0.75, scheduled: dict | None = None,
    buffer_sweep: Sequence[dict] = (), ablation: dict | None = None,
) -> dict[str, str]:
    """The generated blocks of docs/benchmarks-small-model.md, by marker name; ``scheduled``, the
    results of the scheduler entries, adds the block that compares them, ``buffer_sweep``
    (uniform+cbs at other buffer sizes) the buffer-size table, which also reads ``scheduled``,
    and ``ablation`` (uniform+cbs with ``ranking=advantage``) the bandit-vs-rule table."""
    at = min(r["evals"][-1]["rollouts"] for r in finished_runs(results))
    blocks = {"report": markdown_report(results, gain_share), "settings": settings_table(results),
              "sweep": sweep_table(sweep, at), "warmup": warmup_table(results)}
    if scheduled is not None:
        blocks["scheduler"] = scheduler_report(results, scheduled, gain_share)
        if buffer_sweep:
            blocks["scheduler_buffer"] = buffer_sweep_table(results, [*buffer_sweep, scheduled])
        if ablation is not None:
            blocks["scheduler_ablation"] = ablation_table(results, scheduled, ablation, gain_share)
    return blocks


def fill_page(page: str, blocks: dict[str, str]) -> str:
    """``page`` with the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` replaced."""
    for name, text in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin not in page:
            continue
        head, rest = page.split(begin, 1)
        _, tail = rest.split(end, 1)
        page = f"{head}{begin}\n{text.strip()}\n{end}{tail}"
    return page
