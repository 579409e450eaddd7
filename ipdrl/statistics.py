"""Statistics of scores over seeds and datasets, the way the field reports them (Agarwal et al. 2021, rliable).

- :func:`iqm`: the interquartile mean (the mean of the middle 50% of scores), robust to an outlying seed.
- :func:`interval`: a 95% *stratified* bootstrap confidence interval (``scipy.stats.bootstrap``, percentile method):
  the seeds of each dataset are resampled on their own, and the statistic is taken over all resampled scores, so
  an aggregate over datasets weighs each dataset by its runs without mixing seeds across datasets.
- :func:`paired_difference`: method A minus method B on the same dataset and seed, with its interval.

Fewer than two seeds in a stratum give no interval (NaN): one run says nothing about seed noise.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

Scores = Mapping[str, Sequence[float]]  # dataset -> one score per seed
RESAMPLES = 5000


def iqm(scores: Sequence[float]) -> float:
    """Interquartile mean: the mean of the scores between the 25th and 75th percentiles (trimming a quarter
    from each end)."""
    return float(stats.trim_mean(np.asarray(scores, np.float64), 0.25))


def mean(scores: Sequence[float]) -> float:
    return float(np.mean(np.asarray(scores, np.float64)))


STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {"mean": mean, "iqm": iqm}


def interval(scores: Scores, statistic: str = "mean", confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The ``confidence`` stratified bootstrap interval of ``statistic`` over the scores of every dataset."""
    samples = [np.asarray(values, np.float64) for values in scores.values()]
    if not samples or min(len(sample) for sample in samples) < 2:
        return float("nan"), float("nan")
    if all(np.all(sample == sample[0]) for sample in samples):  # no spread: the interval is the value itself
        value = STATISTICS[statistic](np.concatenate(samples))
        return value, value
    pooled = lambda *resampled: STATISTICS[statistic](np.concatenate(resampled))
    result = stats.bootstrap(samples, pooled, n_resamples=RESAMPLES, confidence_level=confidence,
                             method="percentile", vectorized=False, random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summary(scores: Scores, seed: int = 0) -> dict[str, float | list[float] | int]:
    """Mean and IQM with their intervals over ``scores`` (one dataset, or several as strata)."""
    pooled = np.concatenate([np.asarray(values, np.float64) for values in scores.values()])
    out: dict[str, float | list[float] | int] = {"runs": int(len(pooled))}
    for name, statistic in STATISTICS.items():
        out[name] = statistic(pooled)
        out[f"{name}_ci"] = list(interval(scores, name, seed=seed))
    return out


def paired_difference(a: Scores, b: Scores, seed: int = 0) -> dict[str, float | list[float] | int]:
    """Mean of (a - b) with its interval; ``a`` and ``b`` map each dataset (a stratum) to scores of the same seeds
    in the same order."""
    differences = {dataset: np.asarray(a[dataset], np.float64) - np.asarray(b[dataset], np.float64)
                   for dataset in a if dataset in b and len(a[dataset]) == len(b[dataset])}
    if not differences:
        return {"runs": 0, "mean": float("nan"), "mean_ci": [float("nan"), float("nan")]}
    pooled = np.concatenate(list(differences.values()))
    return {"runs": int(len(pooled)), "mean": float(pooled.mean()), "mean_ci": list(interval(differences, "mean",
                                                                                               seed=seed))}
