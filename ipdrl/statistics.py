"""Statistics of scores over seeds and datasets, the way the field reports them (Agarwal et al. 2021, rliable).

- :func:`iqm`: the interquartile mean (the mean of the middle 50% of scores), robust to an outlying seed.
- :func:`interval`: a 95% *stratified* bootstrap confidence interval (``scipy.stats.bootstrap``, percentile method):
  the seeds of each dataset are resampled on their own, and the statistic is taken over all resampled scores, so
  an aggregate over datasets weighs each dataset by its runs without mixing seeds across datasets.
- :func:`paired_difference`: method A minus method B on the same dataset and seed, with its bootstrap interval and
  Student's t interval. The percentile bootstrap never reaches beyond the most extreme resampled means, so with a few
  seeds it is about the range of the per-seed differences (with 3 seeds, exactly their minimum and maximum) and
  covers far less than 95%; the t interval widens with few seeds as it should, assuming roughly normal differences.
- :func:`plateau`: where a noisy learning curve stops rising (a least-squares "rise, then flat" fit).

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
        return {"runs": 0, "mean": float("nan"), "mean_ci": [float("nan"), float("nan")],
                "mean_t_ci": [float("nan"), float("nan")]}
    pooled = np.concatenate(list(differences.values()))
    return {"runs": int(len(pooled)), "mean": float(pooled.mean()),
            "mean_ci": list(interval(differences, "mean", seed=seed)), "mean_t_ci": list(t_interval(pooled))}


def t_interval(differences: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean of ``differences`` (pooled over datasets: strata are not separated, which
    only widens it when the datasets' mean differences disagree)."""
    values = np.asarray(differences, np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return float(result.low), float(result.high)


def plateau(steps: Sequence[int], scores: Sequence[float]) -> dict[str, float | int | bool] | None:
    """Where a learning curve stops rising, read through evaluation noise.

    Fits score = a + b * min(step, tau) by least squares for every tau on the evaluation grid (pass the points of
    several seeds together to pool them) and keeps the best fit. Returns its ``step`` (tau), the fitted ``rise``
    (b * tau) with its standard error, and the ``noise`` (residual spread of one evaluation); a rise within two
    standard errors of zero is ``flat``, with ``step`` the first evaluation. Single checkpoints of offline RL swing by tens of points, so a rule such as "the
    first evaluation that stays within x% of the best" names the last one; the fit averages the swings instead.
    None with fewer than four distinct steps."""
    x, y = np.asarray(steps, float), np.asarray(scores, float)
    grid = sorted(set(int(s) for s in steps))
    if len(grid) < 4:
        return None
    fits = []
    for tau in grid:
        design = np.stack([np.ones_like(x), np.minimum(x, tau)], axis=1)
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        sse = float(((design @ coef - y) ** 2).sum())
        fits.append((sse, tau, coef[1] * tau, design))
    sse, tau, rise, design = min(fits, key=lambda fit: fit[0])
    noise = (sse / max(len(y) - 3, 1)) ** 0.5
    rise_error = tau * noise * np.linalg.pinv(design.T @ design)[1, 1] ** 0.5
    flat = bool(rise < 2 * rise_error)
    return {"step": grid[0] if flat else tau, "rise": float(rise), "rise_error": float(rise_error),
            "noise": noise, "flat": flat}
