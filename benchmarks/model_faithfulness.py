"""Is the ensemble world model faithful where its uncertainty says so? Held-out errors, and imagined MPC rollouts
replayed in the real environment.

    python benchmarks/model_faithfulness.py [--dataset PATH] [--model-steps 2000] [--iql-steps 3000]
                                            [--world-model PATH] [--starts 128] [--length 20] [--seed 0]

1. The ensemble (``ipdrl.world_models.ensemble``, the ``cpu`` budget's sizes, ``--model-steps`` updates at most;
   or ``--world-model``): held-out Gaussian NLL and one-step MSE of s' - s and r, next to predicting the mean change.
2. An IQL (``--iql-steps`` updates) supplies V and the proposal policy; from ``--starts`` random dataset states,
   :func:`ipdrl.augmentation.rollouts.imagined_rollouts` plans L steps in the model (the ``cpu`` AugmentConfig's
   planner), recording imagined rewards and U(s, a) per step.
3. Each start state is restored in the real environment (``env.unwrapped.set_state(qpos, qvel)`` from the
   dataset's ``infos/qpos``, ``infos/qvel``; checked against the stored observation) and the imagined actions are
   replayed open loop. For every prefix of k steps (before a real or predicted termination) the absolute
   difference between the real and the imagined undiscounted return is grouped by whether every step of the
   prefix had U <= kappa (inside) or not (outside), at each k: the uncertainty should separate the two.
   Also the cut the augmentation applies (before the first U > kappa): mean |real - imagined| return per step
   of the kept segments against the uncut rollouts.
4. On real held-out transitions: one-step error inside vs outside kappa, and its rank correlation with U.

Both uncertainty measures ('gjs' and 'disagreement', each with its own kappa) are reported side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ipdrl import augmentation, envs  # noqa: E402
from ipdrl.algos import iql  # noqa: E402
from ipdrl.algos.ipd_stages import value_functions  # noqa: E402
from ipdrl.augmentation import AugmentConfig  # noqa: E402
from ipdrl.augmentation.rollouts import imagined_rollouts  # noqa: E402
from ipdrl.data.d4rl import read_d4rl  # noqa: E402
from ipdrl.planning import PlannerConfig  # noqa: E402
from ipdrl.training import fit  # noqa: E402
from ipdrl.world_models import common, ensemble, ensemble_training  # noqa: E402
from ipdrl.world_models.ensemble import EnsembleConfig  # noqa: E402
from ipdrl.world_models.uncertainty import measure  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "hopper-medium-replay.hdf5"


def world_model(dataset, args) -> tuple[dict, dict]:
    if args.world_model:
        model = ensemble.load_model(args.world_model)
        _, heldout = common.holdout_split(dataset, model["config"].holdout_fraction, args.seed)
        return model, {"loaded": args.world_model, **ensemble_training.one_step_errors(model, heldout)}
    config = EnsembleConfig(**{**ensemble.BUDGETS["cpu"], "max_steps": args.model_steps,
                               "eval_every": min(500, args.model_steps)})
    return ensemble_training.train_ensemble(dataset, config, args.seed, progress=True)


def replay(env, dataset, start: int, actions: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Real rewards of ``actions`` from dataset state ``start`` (until a real termination), the number of real
    steps, and how far the restored observation is from the stored one."""
    env.reset(seed=0)
    env.unwrapped.set_state(dataset.infos["qpos"][start], dataset.infos["qvel"][start])
    mismatch = float(np.abs(env.unwrapped._get_obs() - dataset.observations[start]).max())
    rewards = []
    for action in actions:
        _, reward, terminated, _, _ = env.step(action)
        rewards.append(reward)
        if terminated:
            break
    return np.asarray(rewards), len(rewards), mismatch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--model-steps", type=int, default=2000, help="ensemble updates at most (early stopping)")
    parser.add_argument("--iql-steps", type=int, default=3000)
    parser.add_argument("--world-model", default=None, help="a saved ensemble instead of training one")
    parser.add_argument("--save-model", default=None, help="save the trained ensemble here (PATH.msgpack/.json)")
    parser.add_argument("--starts", type=int, default=128, help="start states (one MPC rollout each)")
    parser.add_argument("--length", type=int, default=20, help="imagined steps per rollout (L)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dataset = read_d4rl(args.dataset)
    if "qpos" not in dataset.infos or "qvel" not in dataset.infos:
        raise SystemExit(f"{args.dataset} has no infos/qpos and infos/qvel: real replays need them.")
    env_id = envs.env_id_for(dataset.name, dataset.metadata)

    model, model_report = world_model(dataset, args)
    if args.save_model:
        ensemble.save_model(model, args.save_model, model_report)
    iql_config = iql.Hyperparameters(steps=args.iql_steps, log_every=min(1000, args.iql_steps))
    iql_state = fit(iql.make_learner(iql_config, dataset), iql_config.steps, args.seed, iql_config.log_every)
    values = value_functions(iql_config, iql_state, dataset.act_dim)
    config = AugmentConfig(**{**augmentation.BUDGETS["cpu"], "rollout_length": args.length})
    kinds = ("gjs", "disagreement")
    kappas = {kind: ensemble.uncertainty_threshold(model, dataset.observations, dataset.actions, kind,
                                                   config.kappa_quantile)[0] for kind in kinds}
    _, heldout = common.holdout_split(dataset, model["config"].holdout_fraction, args.seed)
    one_step = {kind: heldout_error_by_uncertainty(model, heldout, kind, kappas[kind]) for kind in kinds}

    # Imagined MPC rollouts from random dataset states (episode ends excluded: their successor is unknown).
    rng = np.random.default_rng(args.seed)
    starts = rng.choice(np.flatnonzero(~(dataset.terminals | dataset.timeouts)), args.starts, replace=False)
    planner = PlannerConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(PlannerConfig)})
    rollout = functools.partial(imagined_rollouts, values=values, planner=planner, mode=config.mode,
                                length=config.rollout_length, kind=config.uncertainty)
    imagined = jax.device_get(rollout(model, jnp.asarray(dataset.observations[starts]), jax.random.PRNGKey(args.seed)))
    length = config.rollout_length
    flat = lambda x: x.reshape(len(starts) * length, -1)
    uncertainty = {kind: np.asarray(ensemble.uncertainty(model, flat(imagined["observations"]),
                                                         flat(imagined["actions"]), kind)).reshape(-1, length)
                   for kind in kinds}

    env = envs.make_env(env_id)
    gaps, mismatches = [], []
    for i, start in enumerate(starts):
        real, real_steps, mismatch = replay(env, dataset, start, imagined["actions"][i])
        mismatches.append(mismatch)
        predicted_done = np.flatnonzero(imagined["terminals"][i])
        steps = min(real_steps, predicted_done[0] + 1 if len(predicted_done) else length)
        gaps.append(np.abs(np.cumsum(real[:steps]) - np.cumsum(imagined["rewards"][i][:steps])))

    results = {
        "dataset": dataset.name,
        "world_model": {k: v for k, v in model_report.items() if not isinstance(v, list)},
        "starts": len(starts),
        "rollout_length": length,
        "restored_obs_max_error": max(mismatches),
        "kappa": kappas,
        "heldout_one_step": one_step,
        "rollouts": {kind: return_errors(gaps, uncertainty[kind], kappas[kind]) for kind in kinds},
    }
    print(f"\n{dataset.name}: {len(starts)} MPC rollouts of L={length} (planner: {config.mode}, N={config.num_samples}, "
          f"H={config.horizon}, I={config.iterations}); restored-state max |obs error| {max(mismatches):.2g}")
    print(f"world model: held-out NLL {model_report.get('heldout_nll', float('nan')):.3f}; one-step MSE s'-s "
          f"{model_report['obs_delta_mse']:.4g} (mean-change baseline {model_report['obs_delta_mse_baseline']:.4g}), "
          f"r {model_report['reward_mse']:.4g} (baseline {model_report['reward_mse_baseline']:.4g})")
    for kind in kinds:
        row = one_step[kind]
        print(f"\n[{kind}] kappa {kappas[kind]:.4g} (quantile {config.kappa_quantile}). Held-out one-step: normalised "
              f"MSE inside {row['mse_inside']:.4f} / outside {row['mse_outside']:.4f}, |r error| inside "
              f"{row['reward_error_inside']:.4f} / outside {row['reward_error_outside']:.4f}, Spearman(U, error) "
              f"{row['spearman']:.2f}")
        table = results["rollouts"][kind]
        print(f"  {'k':>3} {'|dR| inside':>12} {'n':>4} {'|dR| outside':>13} {'n':>4}")
        for k, row in table["by_horizon"].items():
            if k in (1, 2, 3, 5, 10, 15, 20) or k == length:
                fmt = lambda x: f"{x:12.3f}" if x is not None else f"{'-':>12}"
                print(f"  {k:>3} {fmt(row['inside'])} {row['n_inside']:>4} {fmt(row['outside']):>13} {row['n_outside']:>4}")
        print(f"  |real - imagined| return per step: cut at kappa {table['per_step_error_cut']:.3f} "
              f"({table['cut_segments']} segments, mean length {table['mean_cut_length']:.1f}), uncut "
              f"{table['per_step_error_uncut']:.3f}")
    results["seconds"] = time.perf_counter() - started
    print(f"{results['seconds']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def heldout_error_by_uncertainty(model, heldout, kind: str, kappa: float) -> dict:
    """One-step error of the elite mean on real held-out transitions, inside vs outside U <= kappa."""
    def predict(obs, actions):
        means, logvars = ensemble.elite_predictions(model, obs, actions)
        return means.mean(0), measure(kind, means, logvars)

    means, u = (np.concatenate(x) for x in zip(*(jax.device_get(jax.jit(predict)(heldout.observations[i:i + 4096],
                                                                                   heldout.actions[i:i + 4096]))
                                                 for i in range(0, heldout.size, 4096))))
    stats = jax.device_get(model["stats"])
    targets = np.concatenate([heldout.next_observations - heldout.observations, heldout.rewards[:, None]], -1)
    targets_stats = stats["targets"]
    errors = ((means - (targets - targets_stats["mean"]) / targets_stats["std"]) ** 2).mean(1)
    reward_errors = np.abs(means[:, -1] * targets_stats["std"][-1] + targets_stats["mean"][-1] - heldout.rewards)
    inside = u <= kappa
    rank = lambda x: np.argsort(np.argsort(x))
    return {"mse_inside": float(errors[inside].mean()), "mse_outside": float(errors[~inside].mean()),
            "reward_error_inside": float(reward_errors[inside].mean()),
            "reward_error_outside": float(reward_errors[~inside].mean()),
            "spearman": float(np.corrcoef(rank(u), rank(errors))[0, 1]), "transitions": heldout.size}


def return_errors(gaps: list[np.ndarray], uncertainty: np.ndarray, kappa: float) -> dict:
    """|real - imagined| return of k-step prefixes, by whether every step so far had U <= kappa; and per step
    over the segments the augmentation would keep (cut before the first U > kappa) versus uncut."""
    length = uncertainty.shape[1]
    inside, outside = [[] for _ in range(length)], [[] for _ in range(length)]
    cut, uncut, kept_lengths = [], [], []
    for gap, u in zip(gaps, uncertainty):
        trusted = np.cumprod(u[: len(gap)] <= kappa).astype(bool)
        for k in range(len(gap)):
            (inside if trusted[k] else outside)[k].append(float(gap[k]))
        uncut.append(gap[-1] / len(gap))
        kept = int(trusted.sum())
        if kept:
            cut.append(gap[kept - 1] / kept)
            kept_lengths.append(kept)
    mean = lambda x: float(np.mean(x)) if x else None
    return {
        "by_horizon": {k + 1: {"inside": mean(inside[k]), "n_inside": len(inside[k]), "outside": mean(outside[k]),
                               "n_outside": len(outside[k])} for k in range(length)},
        "per_step_error_cut": mean(cut) if cut else float("nan"),
        "cut_segments": len(cut),
        "mean_cut_length": mean(kept_lengths) if kept_lengths else 0.0,
        "per_step_error_uncut": mean(uncut),
    }


if __name__ == "__main__":
    main()
