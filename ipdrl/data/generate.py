"""``ipdrl data generate``: D4RL-style datasets on any Gymnasium Box environment, with the D4RL recipe.

- ``random``: uniformly random actions.
- ``medium``: train SAC until its deterministic evaluation return reaches ``threshold``, then collect
  ``transitions`` with that (stochastic) policy.
- ``medium-replay``: SAC's whole replay buffer up to the point it reached ``threshold``.
- ``expert``: train SAC for ``expert_steps``, then collect with it.
- ``medium-expert``: medium followed by expert.

SAC training checkpoints to ``work_dir`` at episode boundaries and ``--resume`` continues it; every random choice
is a pure function of the seed and a counter (episode resets are seeded by episode index, action noise by step),
so the same seed gives the same dataset, resumed or not. Collection re-runs deterministically from the saved policy.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Callable, Literal

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ipdrl import envs
from ipdrl.algos import sac
from ipdrl.data.d4rl import write_d4rl
from ipdrl.data.dataset import Dataset, concatenate
from ipdrl.runs import atomic_write_bytes

Level = Literal["random", "medium", "medium-replay", "expert", "medium-expert"]

# About one third of expert return, as D4RL's medium policies (data.md: medium returns ~4.8k / 1.4k / 2.9k).
DEFAULT_THRESHOLDS = {"HalfCheetah-v5": 4800.0, "Hopper-v5": 1500.0, "Walker2d-v5": 2900.0}


@dataclasses.dataclass
class GenerateConfig:
    """Settings of ``ipdrl data generate``."""

    env: str = "Hopper-v5"
    """Gymnasium id of any environment with Box observation and action spaces."""
    level: Level = "medium-replay"
    output: str | None = None
    """Output .hdf5 (default <family>-<level>.hdf5)."""
    seed: int = 0
    threshold: float | None = None
    """Deterministic evaluation return that ends 'medium' training (default per env: HalfCheetah 4800, Hopper 1500, Walker2d 2900)."""
    transitions: int = 1_000_000
    """Transitions collected for random, medium and expert (each half of medium-expert)."""
    max_sac_steps: int = 1_000_000
    """Give up when the threshold is not reached within this many environment steps."""
    expert_steps: int = 1_000_000
    """SAC environment steps for the expert policy."""
    start_steps: int = 10_000
    """Uniform-random warm-up steps before SAC acts."""
    updates_every: int = 10
    """Environment steps between fused update chunks; SAC still makes one update per environment step."""
    eval_every: int = 10_000
    eval_episodes: int = 5
    checkpoint_every: int = 20_000
    work_dir: str | None = None
    """Where resumable SAC state lives (default <output>.work)."""
    resume: bool = False
    hidden_dims: tuple[int, ...] = (256, 256)
    batch_size: int = 256
    progress: bool = True


# ---- environment stepping ------------------------------------------------------------------------------------
class Recorder:
    """Steps one env, records D4RL transitions (with qpos/qvel of the acting state) and auto-resets.

    Episode ``k`` is reset with seed ``seed * 1_000_003 + k`` so episodes do not depend on earlier history.
    Columns live in preallocated arrays (doubling capacity) so replay sampling is a plain gather.
    """

    def __init__(self, env_id: str, seed: int, episode: int = 0):
        self.env = envs.make_env(env_id)
        self.seed, self.episode, self.size = seed, episode, 0
        self.low, self.high = self.env.action_space.low, self.env.action_space.high
        data = getattr(self.env.unwrapped, "data", None)
        obs_shape, act_shape = self.env.observation_space.shape, self.env.action_space.shape
        shapes = {"observations": (obs_shape, np.float32), "actions": (act_shape, np.float32),
                  "rewards": ((), np.float32), "next_observations": (obs_shape, np.float32),
                  "terminals": ((), bool), "timeouts": ((), bool)}
        if data is not None:  # MuJoCo: keep the simulator state so imagined rollouts can be replayed exactly
            shapes.update(qpos=(data.qpos.shape, np.float32), qvel=(data.qvel.shape, np.float32))
        self.arrays = {k: np.zeros((1024, *shape), dtype) for k, (shape, dtype) in shapes.items()}
        self._reset()

    def _reset(self) -> None:
        self.obs, _ = self.env.reset(seed=self.seed * 1_000_003 + self.episode)

    def step(self, action: np.ndarray) -> bool:
        """Take ``action`` (in [-1, 1], rescaled to the env's bounds); returns True when an episode ended."""
        if self.size == len(self.arrays["rewards"]):
            self.arrays = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in self.arrays.items()}
        row = {"observations": self.obs, "actions": action}
        if "qpos" in self.arrays:
            row.update(qpos=self.env.unwrapped.data.qpos, qvel=self.env.unwrapped.data.qvel)
        env_action = self.low + (np.clip(action, -1, 1) + 1) * 0.5 * (self.high - self.low)
        next_obs, reward, terminated, truncated, _ = self.env.step(env_action)
        row.update(rewards=reward, next_observations=next_obs, terminals=terminated, timeouts=truncated)
        for key, value in row.items():
            self.arrays[key][self.size] = value
        self.size += 1
        self.obs = next_obs
        if terminated or truncated:
            self.episode += 1
            self._reset()
            return True
        return False

    def snapshot(self) -> dict | None:
        """The mid-episode state needed to continue exactly (MuJoCo envs), or None at an episode start."""
        if "qpos" not in self.arrays:
            return None
        data = self.env.unwrapped.data
        return {"qpos": data.qpos.tolist(), "qvel": data.qvel.tolist(), "obs": np.asarray(self.obs).tolist(),
                "elapsed": _time_limit(self.env)._elapsed_steps}

    def resume_from(self, snapshot: dict | None) -> None:
        if snapshot is None:
            return
        self.env.unwrapped.set_state(np.asarray(snapshot["qpos"]), np.asarray(snapshot["qvel"]))
        self.obs = np.asarray(snapshot["obs"])
        _time_limit(self.env)._elapsed_steps = snapshot["elapsed"]

    def columns(self) -> dict[str, np.ndarray]:
        return {k: v[: self.size] for k, v in self.arrays.items()}

    def restore(self, columns: dict[str, np.ndarray]) -> None:
        self.arrays = {k: np.array(v) for k, v in columns.items()}
        self.size = len(self.arrays["rewards"])
        if self.size == 0:
            self.arrays = {k: np.zeros((1024, *v.shape[1:]), v.dtype) for k, v in self.arrays.items()}

    def dataset(self, name: str, metadata: dict) -> Dataset:
        """The recorded transitions; an open last episode is closed as a timeout."""
        c = self.columns()
        timeouts = c["timeouts"].copy()
        timeouts[-1] |= not c["terminals"][-1]
        infos = {k: c[k] for k in ("qpos", "qvel") if k in c}
        return Dataset(observations=c["observations"], actions=c["actions"], rewards=c["rewards"],
                       next_observations=c["next_observations"], terminals=c["terminals"], timeouts=timeouts,
                       infos=infos, metadata=metadata, name=name)


def _time_limit(env):
    import gymnasium as gym

    while not isinstance(env, gym.wrappers.TimeLimit):
        env = env.env
    return env


def collect(env_id: str, steps: int, seed: int, act: Callable[[np.ndarray, int], np.ndarray], name: str,
            progress: bool) -> Dataset:
    """``steps`` transitions acting with ``act(obs, step)``."""
    recorder = Recorder(env_id, seed)
    for step in tqdm(range(steps), desc=f"collect {name}", unit="step", disable=not progress):
        recorder.step(act(recorder.obs, step))
    return recorder.dataset(name, {})


# ---- SAC training with a resumable replay buffer --------------------------------------------------------------
@dataclasses.dataclass
class TrainingOutcome:
    state: dict
    replay: Dataset
    medium_policy: dict | None
    reached_at: int | None
    evaluations: list[tuple[int, float]]


class SACTrainer:
    """SAC on ``env_id``, stopping at the medium threshold (and optionally continuing to ``expert_steps``)."""

    def __init__(self, config: GenerateConfig, work_dir: Path):
        self.config, self.work_dir = config, work_dir
        probe = envs.make_env(config.env)
        self.obs_dim, self.act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
        probe.close()
        self.sac = sac.SACConfig(hidden_dims=config.hidden_dims, batch_size=config.batch_size)
        act_dim, sac_config = self.act_dim, self.sac
        self._sample = jax.jit(lambda params, obs, key: sac.sample_action(sac_config, act_dim, params, obs, key))
        self._deterministic = jax.jit(lambda params, obs: sac.deterministic_action(sac_config, act_dim, params, obs))

        def chunk(state, batches, key):
            def body(state, inputs):
                batch, step_key = inputs
                return sac.update(sac_config, act_dim, state, batch, step_key)
            keys = jax.random.split(key, batches["rewards"].shape[0])
            return jax.lax.scan(body, state, (batches, keys))

        self._chunk = jax.jit(chunk)
        self.base_key = jax.random.PRNGKey(config.seed)

    def policy_action(self, params: dict, obs: np.ndarray, step: int) -> np.ndarray:
        key = jax.random.fold_in(jax.random.fold_in(self.base_key, 1), step)
        return np.asarray(self._sample(params, jnp.asarray(obs[None], jnp.float32), key)[0])

    def evaluate(self, params: dict) -> float:
        """Deterministic return, averaged over ``eval_episodes`` (eval env seeds apart from training resets)."""
        returns = []
        for i in range(self.config.eval_episodes):
            env = envs.make_env(self.config.env)
            obs, _ = env.reset(seed=10**9 + self.config.seed * 1000 + i)
            low, high, total, done = env.action_space.low, env.action_space.high, 0.0, False
            while not done:
                action = np.asarray(self._deterministic(params, jnp.asarray(obs[None], jnp.float32))[0])
                obs, reward, terminated, truncated, _ = env.step(low + (action + 1) * 0.5 * (high - low))
                total += reward
                done = terminated or truncated
            returns.append(total)
        return float(np.mean(returns))

    # -- checkpoints at update-chunk boundaries, with the simulator state to continue mid-episode --
    def _save(self, state: dict, recorder: Recorder, step: int, rng: np.random.Generator, evaluations, medium, reached):
        buffer = io.BytesIO()
        np.savez(buffer, **recorder.columns())
        atomic_write_bytes(self.work_dir / "buffer.npz", buffer.getvalue())
        atomic_write_bytes(self.work_dir / "sac.msgpack", flax.serialization.to_bytes(jax.device_get(state)))
        if medium is not None:
            atomic_write_bytes(self.work_dir / "medium_policy.msgpack", flax.serialization.to_bytes(jax.device_get(medium)))
        meta = {"step": step, "episode": recorder.episode, "env_state": recorder.snapshot(),
                "rng": rng.bit_generator.state,
                "evaluations": evaluations, "reached_at": reached, "config": dataclasses.asdict(self.config)}
        atomic_write_bytes(self.work_dir / "progress.json", json.dumps(meta).encode())

    def _load(self, template: dict):
        meta = json.loads((self.work_dir / "progress.json").read_text())
        mine = json.loads(json.dumps(dataclasses.asdict(self.config)))
        changed = sorted(k for k in mine if meta["config"].get(k) != mine[k] and k not in _RESUME_FREE)
        if changed:
            raise ValueError(f"cannot resume from {self.work_dir}: settings differ in {changed}. Use the same "
                             f"settings, or delete the work directory to start over.")
        state = flax.serialization.from_bytes(template, (self.work_dir / "sac.msgpack").read_bytes())
        medium = None
        if (self.work_dir / "medium_policy.msgpack").exists():
            medium = flax.serialization.from_bytes(template["actor"], (self.work_dir / "medium_policy.msgpack").read_bytes())
        with np.load(self.work_dir / "buffer.npz") as columns:
            restored = {k: columns[k] for k in columns.files}
        return state, meta, medium, restored

    def train(self, stop_at_threshold: bool, total_steps: int, threshold: float | None) -> TrainingOutcome:
        config = self.config
        state = sac.init(self.sac, self.obs_dim, self.act_dim, jax.random.fold_in(self.base_key, 0))
        rng = np.random.default_rng(config.seed)
        recorder = Recorder(config.env, config.seed)
        step, evaluations, medium, reached = 0, [], None, None
        if config.resume and (self.work_dir / "progress.json").exists():
            state, meta, medium, columns = self._load(state)
            recorder = Recorder(config.env, config.seed, episode=meta["episode"])
            recorder.restore(columns)
            recorder.resume_from(meta["env_state"])
            rng.bit_generator.state = meta["rng"]
            step, evaluations, reached = meta["step"], [tuple(e) for e in meta["evaluations"]], meta["reached_at"]
        self.work_dir.mkdir(parents=True, exist_ok=True)
        last_checkpoint = step
        bar = tqdm(total=total_steps, initial=step, desc=f"SAC {config.env}", unit="step", disable=not config.progress)
        while step < total_steps and not (stop_at_threshold and reached is not None):
            for _ in range(config.updates_every):
                if step < config.start_steps:
                    action = rng.uniform(-1, 1, self.act_dim).astype(np.float32)
                else:
                    action = self.policy_action(state["actor"], recorder.obs, step)
                recorder.step(action)
                step += 1
                if step % config.eval_every == 0 and step >= config.start_steps:
                    score = self.evaluate(state["actor"])
                    evaluations.append((step, score))
                    bar.set_postfix(eval_return=f"{score:.0f}")
                    if threshold is not None and reached is None and score >= threshold:
                        reached, medium = step, jax.tree_util.tree_map(jnp.array, state["actor"])
                        break
            if step >= config.start_steps // 2 and not (stop_at_threshold and reached is not None):
                index = rng.integers(0, recorder.size, (config.updates_every, config.batch_size))
                columns = recorder.columns()
                batches = {key: columns[source][index].astype(np.float32) for key, source in _BATCH_COLUMNS.items()}
                state, _ = self._chunk(state, batches, jax.random.fold_in(jax.random.fold_in(self.base_key, 2), step))
            if step - last_checkpoint >= config.checkpoint_every and recorder.snapshot() is not None:
                self._save(state, recorder, step, rng, evaluations, medium, reached)
                last_checkpoint = step
            bar.update(step - bar.n)
        bar.close()
        replay = recorder.dataset(f"{config.env}-replay", {})
        if stop_at_threshold and reached is None:
            best = max((score for _, score in evaluations), default=float("nan"))
            raise ValueError(
                f"SAC on {config.env} did not reach the threshold {threshold:.0f} within {total_steps} steps (best "
                f"deterministic return {best:.0f}). Lower --threshold or raise --max-sac-steps (training resumes "
                f"with --resume)."
            )
        self._save(state, recorder, step, rng, evaluations, medium, reached)
        return TrainingOutcome(state, replay, medium, reached, evaluations)


# Settings that only say when to stop or where to write: a resumed run may change them.
_RESUME_FREE = {"resume", "progress", "output", "level", "threshold", "max_sac_steps", "expert_steps", "transitions"}

_BATCH_COLUMNS = {"observations": "observations", "actions": "actions", "rewards": "rewards",
                  "next_observations": "next_observations", "dones": "terminals"}


# ---- the recipe ----------------------------------------------------------------------------------------------
def generate(config: GenerateConfig) -> Path:
    """Make the dataset ``config`` describes and write it (D4RL hdf5, atomically); returns its path."""
    import gymnasium as gym
    import mujoco

    probe = envs.make_env(config.env)
    if not (isinstance(probe.observation_space, gym.spaces.Box) and isinstance(probe.action_space, gym.spaces.Box)):
        raise ValueError(f"{config.env} has non-Box spaces; the generator needs Box observations and actions.")
    probe.close()
    family = envs.family_of(config.env)
    stem = f"{family.name if family else config.env.lower()}-{config.level}"
    output = Path(config.output or f"{stem}.hdf5")
    work_dir = Path(config.work_dir) if config.work_dir else output.with_suffix(".work")
    threshold = config.threshold if config.threshold is not None else DEFAULT_THRESHOLDS.get(config.env)
    if config.level in ("medium", "medium-replay", "medium-expert") and threshold is None:
        raise ValueError(f"no default medium threshold for {config.env}: pass --threshold (a deterministic "
                         f"evaluation return, about a third of an expert's).")
    metadata = {
        "env": config.env,
        "generator": {**dataclasses.asdict(config), "threshold": threshold,
                      "recipe": RECIPES[config.level], "versions": {"gymnasium": gym.__version__,
                      "mujoco": mujoco.__version__, "jax": jax.__version__}},
    }
    started = time.perf_counter()
    if config.level == "random":
        rng = np.random.default_rng(config.seed)
        act_dim = envs.make_env(config.env).action_space.shape[0]
        dataset = collect(config.env, config.transitions, config.seed,
                          lambda obs, step: rng.uniform(-1, 1, act_dim).astype(np.float32), stem, config.progress)
    else:
        trainer = SACTrainer(config, work_dir)
        expert = config.level in ("expert", "medium-expert")
        outcome = trainer.train(stop_at_threshold=not expert,
                                total_steps=config.expert_steps if expert else config.max_sac_steps,
                                threshold=None if config.level == "expert" else threshold)
        metadata["generator"].update(reached_at=outcome.reached_at, evaluations=outcome.evaluations)

        def policy_data(actor: dict, name: str, seed_offset: int) -> Dataset:
            return collect(config.env, config.transitions, config.seed + seed_offset,
                           lambda obs, step: trainer.policy_action(actor, obs, 10**9 + seed_offset + step), name,
                           config.progress)

        if config.level == "medium-replay":
            dataset = outcome.replay
        elif config.level == "medium":
            dataset = policy_data(outcome.medium_policy, stem, 1)
        elif config.level == "expert":
            dataset = policy_data(outcome.state["actor"], stem, 2)
        else:
            if outcome.medium_policy is None:
                raise ValueError(f"SAC never reached the medium threshold {threshold:.0f} within {config.expert_steps} "
                                 f"steps, so there is no medium half: lower --threshold or raise --expert-steps.")
            dataset = concatenate([policy_data(outcome.medium_policy, stem, 1),
                                   policy_data(outcome.state["actor"], stem, 2)])
    metadata["generator"]["seconds"] = round(time.perf_counter() - started, 1)
    write_d4rl(dataset.replace(name=stem, metadata=metadata), output)
    return output


RECIPES = {
    "random": "uniform random actions",
    "medium": "SAC until deterministic eval >= threshold, then its stochastic policy",
    "medium-replay": "SAC replay buffer until deterministic eval >= threshold",
    "expert": "SAC trained for expert_steps, then its stochastic policy",
    "medium-expert": "medium followed by expert",
}


def main(argv: list[str]) -> int:
    import tyro

    from ipdrl.data.loading import describe, format_description
    from ipdrl.data.d4rl import read_d4rl

    config = tyro.cli(GenerateConfig, args=argv, prog="ipdrl data generate",
                      description="Generate a D4RL-style dataset with the D4RL recipe (JAX SAC behaviour agent).")
    path = generate(config)
    print(f"wrote {path}\n{format_description(describe(read_d4rl(path)))}")
    return 0
