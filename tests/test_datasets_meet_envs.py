"""Where a dataset meets an environment: the family and reference scores it is scored with, and its actions' units."""

from __future__ import annotations

import json

import gymnasium as gym
import jax
import numpy as np
import pytest
from conftest import synthetic_dataset

from ipdrl import envs, pipelines, presets
from ipdrl.algos import bc
from ipdrl.commands import main as cli_main
from ipdrl.data.d4rl import read_d4rl, write_d4rl
from ipdrl.data.loading import load_dataset


def hopper_episodes(tiny_hopper, episodes: int = 8):
    return tiny_hopper.first_episodes(episodes)


# ---- the family and the reference scores -------------------------------------------------------------------
def test_minari_datasets_are_scored_with_their_own_reference_scores(tmp_path, monkeypatch, capsys, tiny_hopper):
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    data = hopper_episodes(tiny_hopper)
    buffers = []
    for index, (start, end) in enumerate(zip(data.episode_starts, data.episode_ends)):
        buffers.append(EpisodeBuffer(
            id=index, observations=np.concatenate([data.observations[start:end], data.next_observations[end - 1:end]]),
            actions=data.actions[start:end], rewards=data.rewards[start:end].tolist(),
            terminations=data.terminals[start:end].tolist(), truncations=data.timeouts[start:end].tolist(), infos={}))
    # The id names no family; the env spec (Hopper-v5) and the reference scores are in the metadata only.
    minari.create_dataset_from_buffers("lab/mydata-v0", buffers, env="Hopper-v5", algorithm_name="x", author="t",
                                       author_email="t@example.org", ref_min_score=0.0, ref_max_score=500.0)
    assert cli_main(["data", "info", "minari:lab/mydata-v0"]) == 0
    out = capsys.readouterr().out
    assert "the dataset's own reference scores" in out and "0 to 500" in out
    facts = json.loads((cli_main(["data", "info", "minari:lab/mydata-v0", "--json"]), capsys.readouterr().out)[1])
    returns = load_dataset("minari:lab/mydata-v0").episode_returns()
    assert facts["normalized_mean"] == pytest.approx(100 * returns.mean() / 500.0)
    results = pipelines.train("bc", presets.make_config(bc, "minari:lab/mydata-v0", "tiny", steps=20, log_every=10,
                                                        eval_episodes=1, run_dir=str(tmp_path / "run"), progress=False))
    assert results["env"] == "Hopper-v5" and results["reference_table"] == envs.OWN_REFERENCE
    assert results["normalized_mean"] == pytest.approx(100 * results["return_mean"] / 500.0)


def test_the_family_comes_from_the_metadata_env_before_the_file_name(tmp_path, tiny_hopper):
    path = write_d4rl(hopper_episodes(tiny_hopper).replace(name="mydata"), tmp_path / "mydata.hdf5")
    dataset = read_d4rl(path)
    assert dataset.metadata["env"] == "Hopper-v5"
    assert dataset.reference() == envs.Reference(-20.272305, 3234.3, envs.REFERENCE_TABLE)
    assert presets.dataset_family(str(path)).name == "hopper"
    assert presets.make_config(bc, str(path), "tiny").top_fraction == 1.0
    results = pipelines.train("bc", presets.make_config(bc, str(path), "tiny", steps=20, log_every=10, eval_episodes=1,
                                                        run_dir=str(tmp_path / "run"), progress=False))
    assert np.isfinite(results["normalized_mean"]) and results["reference_table"] == envs.REFERENCE_TABLE


# ---- actions ------------------------------------------------------------------------------------------------
def test_actions_far_outside_the_bounds_are_an_error_that_says_how_to_rescale(tmp_path, tiny_hopper):
    data = hopper_episodes(tiny_hopper)
    path = write_d4rl(data.replace(actions=data.actions * 5.0), tmp_path / "hopper-scaled.hdf5")
    config = presets.make_config(bc, str(path), "tiny", run_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(ValueError, match=r"outside Hopper-v5's action bounds \[-1, 1\].*divide them by 5"):
        pipelines.train("bc", config)


def test_a_few_stragglers_are_clipped_with_a_warning(tmp_path, tiny_hopper):
    data = tiny_hopper
    actions = data.actions.copy()
    actions[:3] = 1.3
    path = write_d4rl(data.replace(actions=actions), tmp_path / "hopper-stragglers.hdf5")
    with pytest.warns(UserWarning, match="3 actions .* are clipped"):
        env_id, prepared = pipelines.prepare(bc.Config(dataset=str(path)), read_d4rl(path))
    assert env_id == "Hopper-v5" and prepared.actions.max() <= 1.0


class RecordActions(gym.Wrapper):
    applied: list = []

    def step(self, action):
        RecordActions.applied.append(np.asarray(action, np.float64))
        return self.env.step(action)


def test_generate_train_evaluate_agree_on_the_units_of_an_env_with_bounds_other_than_one(tmp_path, monkeypatch):
    """Pendulum-v1's torque is in [-2, 2]: the generator records it in those units, training sees [-1, 1], and the
    evaluated policy applies the data's torque to the environment."""
    from ipdrl.data.generator import GenerateConfig, generate

    path = generate(GenerateConfig(env="Pendulum-v1", level="random", transitions=600, seed=0,
                                   output=str(tmp_path / "pendulum-random.hdf5"), progress=False))
    generated = read_d4rl(path)
    assert generated.metadata["env"] == "Pendulum-v1" and np.abs(generated.actions).max() > 1.5  # env units
    constant = generated.replace(actions=np.full_like(generated.actions, 1.5))
    data_path = write_d4rl(constant, tmp_path / "pendulum-constant.hdf5")
    config = presets.make_config(bc, str(data_path), "tiny", steps=400, log_every=100, learning_rate=1e-2,
                                 eval_episodes=1, run_dir=str(tmp_path / "run"), progress=False)
    make_env = envs.make_env
    monkeypatch.setattr(envs, "make_env", lambda env_id, seed=None: RecordActions(make_env(env_id, seed)))
    RecordActions.applied = []
    results = pipelines.train("bc", config)
    assert results["env"] == "Pendulum-v1" and "normalized_mean" not in results  # no reference scores for it
    np.testing.assert_allclose(np.concatenate(RecordActions.applied), 1.5, atol=0.05)
    bounds = envs.action_bounds("Pendulum-v1")
    np.testing.assert_allclose(bounds.to_env(bounds.to_policy(generated.actions)), generated.actions, atol=1e-5)


def test_unit_bounds_map_actions_exactly():
    bounds = envs.ActionBounds(np.full(3, -1.0, np.float32), np.ones(3, np.float32))
    actions = synthetic_dataset().actions
    assert bounds.unit and bounds.to_policy(actions) is actions
    np.testing.assert_array_equal(bounds.to_env(actions), actions)
    assert jax.numpy.asarray(bounds.to_env(np.array([[2.0, -3.0, 0.5]]))).tolist() == [[1.0, -1.0, 0.5]]
