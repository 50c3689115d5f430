"""The simulator checked against a real policy trained for real.

The simulator is an instrument: its claims hold only where it predicts what a real
GRPO run does. This package takes the results file of the real small-model run
(``benchmarks/small_model``, committed under ``docs/results/``), builds the simulated
twin of that run (its starting pass rates, batch, group bounds and rollout budget),
calibrates the twin's learning rate on uniform alone, and then predicts every other
entry, so that the ranking and the ratios can be set beside the real ones.

- :mod:`.difficulty_fit`: a Beta mixture from the real run's starting pass counts;
- :mod:`.real_results`: reading the real run's results file (JSON only, no import of
  the benchmark, so data flows one way);
- :mod:`.twin`: the simulated twin and its calibration on uniform;
- :mod:`.side_by_side`: the figures of both, with the real run's confidence intervals.
"""
