"""A real GRPO experiment with the rollout allocators: a small transformer on arithmetic.

The simulator (docs/simulator.md) models how pass rates move; this package trains a real
policy instead, so that "fewer rollouts to the same accuracy" is measured on a model whose
pass rates move by gradient descent. Only torch, numpy, scipy and our allocators package are
used (no OpenRLHF, vLLM or Ray): it runs on one GPU, and on CPU with a small setting.

Modules, one idea each:

- :mod:`.task`: the arithmetic problems, their encoding, the exact checker, the datasets.
- :mod:`.model`: the decoder, sampling, greedy accuracy, completion log-probabilities.
- :mod:`.config`: the settings of a run, and the named presets (smoke, CPU, GPU).
- :mod:`.warmup`: supervised warm-up to a starting pass rate, and the starting pass rates.
- :mod:`.grpo`: advantages, loss, and one GRPO run through ``run_step`` with one allocator.
- :mod:`.runs`: every allocator and seed from one checkpoint, the results JSON.
- :mod:`.scheduling`: a step whose batch a rollout scheduler chooses (PPO's clipped loss, reuse).
- :mod:`.report`: statistics with confidence intervals over seeds, tables, plots.
- :mod:`.report_scheduler`: the tables of the scheduler entries, the buffer sweep, the ablation.
- :mod:`.page`: the page's generated blocks and how they are written into it.
- :mod:`.cli`: the command line (``python -m benchmarks.small_model``).
"""
