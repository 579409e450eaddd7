"""How strong is DWM-MPC's disagreement penalty at lambda 1, next to the return it is subtracted from?

    python benchmarks/dwm_penalty_scale.py RUN [RUN ...] [--states 20] [--seed 0]

RUN is a finished ``ipdrl train --algo dwm-mpc --model.members N`` run directory (N >= 2). At ``--states`` dataset
states drawn at random, with the run's own base policy, models, H and M and one noise bank per state, it prints the
norm of the penalty's gradient (lambda 1) over the norm of the return's gradient, both with respect to the policy
weights the optimiser moves: a lambda of 1 / ratio makes the two equal partners. The penalty is measured in raw
state units, so this ratio, not lambda itself, carries over from one dataset to another.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ipdrl.algos import dwm_models, dwm_mpc  # noqa: E402
from ipdrl.data.loading import load_dataset  # noqa: E402
from ipdrl.pipelines import eval_env_id, saved_config  # noqa: E402
from ipdrl.planning.policy_ascent import AscentConfig, planning_objective  # noqa: E402
from ipdrl.runs import Run  # noqa: E402


def norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(tree)))


def gradient_ratios(run_dir: Path, states: int, seed: int) -> np.ndarray:
    """|grad penalty (lambda 1)| / |grad return| at ``states`` random dataset states of ``run_dir``'s dataset."""
    run = Run.open(run_dir)
    config = saved_config(dwm_mpc.ALGORITHM, run)
    dataset = load_dataset(config.dataset)
    base = dwm_models.load_base(config, dataset, run, eval_env_id(config, dataset), train=False)
    models = dwm_models.load_world_models(config, dataset, run, dwm_models.critic_reward_scale(base), train=False)
    imagination = dwm_mpc.make_imagination(config, base, models, dataset)
    params = dwm_mpc.policy_params(base, models, 0.0)
    planner = config.planner
    only_return, unit_penalty = (dataclasses.replace(planner, disagreement_penalty=lam, proximity_penalty=0.0)
                                 for lam in (0.0, 1.0))

    def ratio(obs: jax.Array, key: jax.Array) -> jax.Array:
        noise = jax.random.normal(key, (planner.horizon, planner.particles, *imagination.noise_shape))

        def gradient(cfg: AscentConfig):
            objective = lambda actor: planning_objective(  # noqa: E731
                imagination, cfg, actor, params["frozen"], params["actor"], obs, noise)
            return jax.grad(objective)(params["actor"])

        of_return = gradient(only_return)
        of_penalty = jax.tree_util.tree_map(jnp.subtract, of_return, gradient(unit_penalty))
        return norm(of_penalty) / norm(of_return)

    rows = np.random.default_rng(seed).choice(dataset.size, states, replace=False)
    keys = jax.random.split(jax.random.PRNGKey(seed), states)
    return np.asarray(jax.jit(jax.vmap(ratio))(jnp.asarray(dataset.observations[rows]), keys))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished `ipdrl train --algo dwm-mpc --model.members N` run directories")
    parser.add_argument("--states", type=int, default=20, help="dataset states drawn at random")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"{'run':<75} {'median':>8} {'lambda for 1:1':>14} {'25%':>7} {'75%':>7}")
    for run_dir in args.runs:
        ratios = gradient_ratios(Path(run_dir), args.states, args.seed)
        median = float(np.median(ratios))
        low, high = np.percentile(ratios, [25, 75])
        name = "/".join(Path(run_dir).parts[-2:])
        print(f"{name:<75} {median:>8.4f} {1 / median:>14.1f} {low:>7.4f} {high:>7.4f}", flush=True)


if __name__ == "__main__":
    main()
