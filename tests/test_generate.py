"""The D4RL-recipe generator: format, determinism, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest

from ipdrl.data import generator as gen
from ipdrl.data.d4rl import read_d4rl

TINY = dict(env="Hopper-v5", max_sac_steps=600, start_steps=200, updates_every=10, eval_every=200,
            eval_episodes=1, checkpoint_every=100, hidden_dims=(16, 16), batch_size=32, progress=False)


def arrays(dataset):
    return {k: getattr(dataset, k) for k in ("observations", "actions", "rewards", "next_observations",
                                             "terminals", "timeouts")} | dict(dataset.infos)


def test_random_level_format_and_determinism(tmp_path):
    paths = [gen.generate(gen.GenerateConfig(env="Hopper-v5", level="random", transitions=1500, seed=7,
                                             output=str(tmp_path / f"r{i}.hdf5"), progress=False)) for i in range(2)]
    first, second = (read_d4rl(p) for p in paths)
    for key, value in arrays(first).items():
        assert np.array_equal(value, arrays(second)[key]), key
    ends = first.terminals | first.timeouts
    assert first.size == 1500 and first.timeouts[-1] or first.terminals[-1]
    # stored successors are the environment's: inside an episode next_obs[t] == obs[t+1]
    inside = ~ends[:-1]
    assert np.array_equal(first.next_observations[:-1][inside], first.observations[1:][inside])
    assert first.infos["qpos"].shape == (1500, 6) and first.metadata["env"] == "Hopper-v5"
    assert first.metadata["generator"]["level"] == "random" and first.metadata["generator"]["seed"] == 7
    other = read_d4rl(gen.generate(gen.GenerateConfig(env="Hopper-v5", level="random", transitions=1500, seed=8,
                                                      output=str(tmp_path / "r8.hdf5"), progress=False)))
    assert not np.array_equal(other.actions, first.actions)


def test_sac_replay_is_deterministic_and_resume_is_exact(tmp_path, monkeypatch):
    def run(name, **changes):
        config = gen.GenerateConfig(level="medium-replay", threshold=1e9, output=str(tmp_path / f"{name}.hdf5"), **TINY)
        config = gen.GenerateConfig(**{**config.__dict__, **changes})
        return config

    # An unreachable threshold is a clear error; the buffer is still checkpointed for --resume.
    with pytest.raises(ValueError, match="did not reach the threshold"):
        gen.generate(run("a"))
    full = gen.SACTrainer(run("full"), tmp_path / "full.work").train(False, 600, None)
    again = gen.SACTrainer(run("again"), tmp_path / "again.work").train(False, 600, None)
    assert np.array_equal(full.replay.observations, again.replay.observations)

    # Interrupt after the first checkpoint, then resume: identical buffer and weights.
    original_save = gen.SACTrainer._save
    calls = []

    def save_then_die(self, *args):
        original_save(self, *args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(gen.SACTrainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        gen.SACTrainer(run("cut"), tmp_path / "cut.work").train(False, 600, None)
    monkeypatch.setattr(gen.SACTrainer, "_save", original_save)
    with pytest.raises(FileExistsError, match="holds SAC training at step .*pass --resume"):
        gen.SACTrainer(run("cut"), tmp_path / "cut.work").train(False, 600, None)  # never starts over silently
    resumed = gen.SACTrainer(run("cut", resume=True), tmp_path / "cut.work").train(False, 600, None)
    assert resumed.replay.size == full.replay.size == 600
    for key, value in arrays(full.replay).items():
        assert np.array_equal(value, arrays(resumed.replay)[key]), key
    import jax
    for a, b in zip(jax.tree_util.tree_leaves(full.state), jax.tree_util.tree_leaves(resumed.state)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_medium_replay_stops_at_threshold(tmp_path):
    config = gen.GenerateConfig(level="medium-replay", threshold=-1e9, output=str(tmp_path / "m.hdf5"), **TINY)
    dataset = read_d4rl(gen.generate(config))
    assert dataset.size == 200  # first evaluation (after warm-up) already beats the threshold
    assert dataset.metadata["generator"]["reached_at"] == 200


def test_generator_errors(tmp_path):
    with pytest.raises(ValueError, match="--threshold"):
        gen.generate(gen.GenerateConfig(env="Pendulum-v1", level="medium", output=str(tmp_path / "p.hdf5")))
    with pytest.raises(ValueError, match="cannot make"):
        gen.generate(gen.GenerateConfig(env="Nope-v0", level="random", output=str(tmp_path / "n.hdf5")))
