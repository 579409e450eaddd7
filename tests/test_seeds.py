"""Several seeds in one process (``ipdrl train --seeds``): bit-identical to single runs with ``map``, close with
``vmap``, one run directory each, and a lagging seed's catch-up on resume."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from ipdrl import pipelines, presets
from ipdrl.algos import get_algorithm, iql
from ipdrl.data.loading import load_dataset
from ipdrl.runs import Run
from ipdrl.training import train_in_run, train_seeds_in_runs


def tiny(algo: str, tmp_path, **changes):
    return presets.make_config(get_algorithm(algo), "embedded", "tiny", progress=False, **changes)


def leaves(run_dir) -> list[np.ndarray]:
    run = Run.open(run_dir)
    config = pipelines.saved_config(get_algorithm("iql"), run)
    learner = iql.make_learner(config, load_dataset("embedded"))
    state, _ = run.load_checkpoint(learner.init(jax.random.PRNGKey(config.seed)))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


@pytest.mark.parametrize("algo", ["iql", "dt"])
def test_seeds_trained_together_are_bit_identical_to_their_own_runs(algo, tmp_path):
    together = pipelines.train_seeds(algo, tiny(algo, tmp_path, run_dir=str(tmp_path / "together-s{seed}")), [0, 1])
    for seed, result in zip([0, 1], together):
        alone = pipelines.train(algo, tiny(algo, tmp_path, seed=seed, run_dir=str(tmp_path / f"alone-s{seed}")))
        assert result["run_dir"] == str(tmp_path / f"together-s{seed}") and result["seed"] == seed
        assert result["returns"] == alone["returns"]
        assert (tmp_path / f"together-s{seed}" / "checkpoint.msgpack").read_bytes() == \
            (tmp_path / f"alone-s{seed}" / "checkpoint.msgpack").read_bytes()
        assert json.loads((tmp_path / f"together-s{seed}" / "results.json").read_text())["seeds_trained_together"] == 2


def test_vmapped_seeds_stay_within_float_rounding_of_their_own_runs(tmp_path):
    pipelines.train_seeds("iql", tiny("iql", tmp_path, run_dir=str(tmp_path / "vmap-s{seed}")), [0, 1], "vmap")
    pipelines.train("iql", tiny("iql", tmp_path, seed=1, run_dir=str(tmp_path / "alone-s1")))
    for together, alone in zip(leaves(tmp_path / "vmap-s1"), leaves(tmp_path / "alone-s1")):
        np.testing.assert_allclose(together, alone, rtol=1e-3, atol=1e-4)


def test_a_seed_that_lags_on_resume_catches_up_to_the_same_numbers(tmp_path):
    dataset = load_dataset("embedded")
    config = tiny("iql", tmp_path, log_every=50, checkpoint_every=50)
    learner = iql.make_learner(config, dataset)
    configs = [dataclasses.replace(config, seed=seed) for seed in (0, 1)]
    runs = [Run.create(tmp_path / f"s{seed}", {"seed": seed}) for seed in (0, 1)]
    # a kill between the seeds' saves leaves them at different steps: seed 0 at 100, seed 1 at 150
    for run, run_config, steps in zip(runs, configs, (100, 150)):
        train_in_run(learner, dataclasses.replace(config, steps=steps), run_config, run, None, None)
    resumed = train_seeds_in_runs(learner, config, configs, runs, None, None)
    for seed, state in zip((0, 1), resumed):
        alone = train_in_run(learner, config, configs[seed], Run.create(tmp_path / f"alone{seed}", {}), None, None)
        for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(alone)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_seeds_refuse_what_they_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="several stages"):
        pipelines.train_seeds("ipd", tiny("ipd", tmp_path), [0, 1])
    with pytest.raises(ValueError, match=r"needs \{seed\}"):
        pipelines.train_seeds("iql", tiny("iql", tmp_path, run_dir=str(tmp_path / "one")), [0, 1])
    with pytest.raises(ValueError, match="distinct"):
        pipelines.train_seeds("iql", tiny("iql", tmp_path), [0, 0])


def test_the_command_line_takes_seed_and_seeds(tmp_path, capsys):
    from ipdrl.commands import main

    assert main(["train", "--algo", "bc", "--budget", "tiny", "--seed", "3", "--eval-episodes", "1", "--no-progress",
                 "--run-dir", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "one" / "results.json").read_text())["seed"] == 3
    assert main(["train", "--algo", "bc", "--budget", "tiny", "--seeds", "4", "5", "--eval-episodes", "1",
                 "--no-progress", "--run-dir", str(tmp_path / "bc-s{seed}")]) == 0
    assert [json.loads((tmp_path / f"bc-s{s}" / "results.json").read_text())["seed"] for s in (4, 5)] == [4, 5]


def test_eval_save_replaces_the_results_and_keeps_the_old_score(tmp_path, capsys):
    from ipdrl.commands import main

    run = tmp_path / "bc"
    assert main(["train", "--algo", "bc", "--budget", "tiny", "--eval-episodes", "1", "--no-progress",
                 "--run-dir", str(run)]) == 0
    before = json.loads((run / "results.json").read_text())
    assert main(["eval", str(run), "--episodes", "2"]) == 0  # without --save, results.json is untouched
    assert json.loads((run / "results.json").read_text()) == before
    assert main(["eval", str(run), "--episodes", "2", "--save"]) == 0
    after = json.loads((run / "results.json").read_text())
    assert (after["episodes"], after["train_seconds"], after["seed"]) == (2, before["train_seconds"], before["seed"])
    assert len(after["returns"]) == 2 and after["replaced"]["episodes"] == 1
    (run / "results.json").unlink()
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--save"])
    assert "no results.json" in capsys.readouterr().err
