"""The augmentation report (branch points, accepted and rejected by reason, values, ratio) and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ipdrl.augmentation.config import REJECTIONS, AugmentConfig
from ipdrl.augmentation.rollouts import Judgement
from ipdrl.data.dataset import Dataset


def report(config: AugmentConfig, tried: list[Judgement], segments: list[dict], candidates: np.ndarray,
            delta: np.ndarray, kappa: float, data_uncertainty: np.ndarray | None, dataset: Dataset,
            augmented: Dataset, target: int, imagined_count: int, simulated: int, seconds: float) -> dict[str, Any]:
    nothing = Judgement(np.zeros(0, int), np.zeros(0, bool), np.zeros(0), np.zeros(0), np.zeros(0, object))
    joined = Judgement(*(np.concatenate(x) for x in zip(*tried))) if tried else nothing
    accepted = joined.reason == ""
    finite = np.isfinite(joined.imagined_value)
    mean = lambda x: float(np.mean(x)) if len(x) else None
    sample = np.random.default_rng(0).permutation(len(joined.reason))[:2000]  # enough points for the plots
    report: dict[str, Any] = {
        "mode": config.mode,
        "kappa": kappa,
        "kappa_quantile": None if config.kappa is not None else config.kappa_quantile,
        "uncertainty": config.uncertainty,
        "real_transitions": dataset.size,
        "branch_candidates": int(len(candidates)),
        "mean_suboptimality_of_candidates": mean(delta[candidates]),
        "rollouts": int(len(joined.reason)),
        "accepted": len(segments),
        "accepted_in_tried": int(accepted.sum()),
        "rejected": {reason: int((joined.reason == reason).sum()) for reason in REJECTIONS},
        "mean_imagined_value": mean(joined.imagined_value[finite]),
        "mean_real_value": mean(joined.real_value),
        "mean_imagined_value_accepted": mean(joined.imagined_value[accepted]),
        "mean_real_value_accepted": mean(joined.real_value[accepted]),
        "mean_segment_length": mean(joined.lengths),
        "target_imagined_transitions": target,
        "imagined_transitions": imagined_count,
        "new_transitions": augmented.size - dataset.size,
        "ratio_target": config.ratio,
        "ratio_achieved": imagined_count / dataset.size,
        "candidates_exhausted": imagined_count < target,
        "seconds": seconds,
        "imagined_steps_simulated": simulated,
        "imagined_steps_per_second": simulated / seconds if seconds > 0 else 0.0,
        "accepted_transitions_per_second": imagined_count / seconds if seconds > 0 else 0.0,
        "plot_data": {
            "imagined_value": [float(x) if np.isfinite(x) else None for x in joined.imagined_value[sample]],
            "real_value": joined.real_value[sample].tolist(),
            "reason": [str(r) for r in joined.reason[sample]],
        },
    }
    if data_uncertainty is not None:
        counts, edges = np.histogram(data_uncertainty, bins=50, range=(0.0, float(np.quantile(data_uncertainty, 0.99))))
        report["plot_data"]["uncertainty_histogram"] = {"counts": counts.tolist(), "edges": edges.tolist()}
    return report


def plot_report(report: dict, path: Path) -> Path:
    """Uncertainty of the data with kappa, imagined vs real value per rollout, accepted/rejected counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report["plot_data"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    histogram = data.get("uncertainty_histogram")
    if histogram:
        edges = np.asarray(histogram["edges"])
        axes[0].stairs(histogram["counts"], edges, fill=True, alpha=0.6)
    axes[0].axvline(report["kappa"], color="red", label=f"kappa = {report['kappa']:.3g}")
    axes[0].set(title=f"U ({report['uncertainty']}) on the dataset's (s, a)", xlabel="U", ylabel="count")
    axes[0].legend()
    imagined, real = np.asarray(data["imagined_value"], float), np.asarray(data["real_value"], float)
    reasons = np.asarray(data["reason"])
    for reason, color in (("", "tab:green"), ("not_better", "tab:gray"), ("termination", "tab:orange"),
                          ("uncertainty", "tab:red")):
        mask = (reasons == reason) & np.isfinite(imagined)
        axes[1].scatter(real[mask], imagined[mask], s=6, color=color, label=reason or "accepted")
    if np.isfinite(imagined).any():
        low, high = np.nanmin([real.min(), np.nanmin(imagined)]), np.nanmax([real.max(), np.nanmax(imagined)])
        axes[1].plot([low, high], [low, high], "k--", lw=1)
    axes[1].set(title="segment value (V's units)", xlabel="real continuation", ylabel="imagined")
    axes[1].legend(fontsize=8)
    counts = {"accepted": report["accepted_in_tried"], **report["rejected"]}
    axes[2].bar(list(counts), list(counts.values()), color=["tab:green", "tab:red", "tab:orange", "tab:gray"])
    axes[2].set(title=f"{report['rollouts']} rollouts; imagined:real {report['ratio_achieved']:.3f}")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".tmp.png"), dpi=90)
    plt.close(fig)
    path.with_suffix(".tmp.png").replace(path)
    return path
