"""IPD stage 2: geometric JS divergence, ensemble training, elites, persistence, termination, kappa."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipdrl.data.dataset import Dataset
from ipdrl.world_models import common, ensemble, ensemble_training
from ipdrl.world_models.ensemble import EnsembleConfig
from ipdrl.world_models.uncertainty import disagreement, geometric_js, mean_pairwise_gjs


def test_softplus_is_jax_softplus_with_its_gradient():
    x = jnp.linspace(-80.0, 80.0, 2001)
    np.testing.assert_allclose(ensemble.softplus(x), jax.nn.softplus(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.vmap(jax.grad(ensemble.softplus))(x), jax.vmap(jax.grad(jax.nn.softplus))(x),
                               rtol=1e-6, atol=1e-7)


# ---- geometric Jensen-Shannon divergence ----------------------------------------------------------------
def log_normal(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return (-0.5 * (x - mean) ** 2 / var - 0.5 * np.log(2 * np.pi * var)).sum(-1)


def test_gjs_worked_example():
    value = geometric_js(jnp.array([0.0]), jnp.array([0.0]), jnp.array([2.0]), jnp.array([0.0]))
    assert float(value) == pytest.approx(0.5, abs=1e-6)


def test_gjs_closed_form_matches_monte_carlo_of_its_definition():
    """The closed form is 1/2 KL(g||p1) + 1/2 KL(g||p2), g = sqrt(p1 p2) / Z, estimated here without using any
    closed form for g: Z and the expectations under g come from importance sampling with a broad proposal."""
    rng = np.random.default_rng(0)
    m1, v1 = np.array([0.0, 1.0, -0.5]), np.array([1.0, 0.3, 2.0])
    m2, v2 = np.array([1.5, 0.2, 0.5]), np.array([0.25, 1.5, 2.0])
    closed = float(geometric_js(jnp.asarray(m1), jnp.log(jnp.asarray(v1)), jnp.asarray(m2), jnp.log(jnp.asarray(v2))))

    proposal_mean, proposal_var = np.zeros(3), np.full(3, 4.0)
    x = proposal_mean + np.sqrt(proposal_var) * rng.normal(size=(1_000_000, 3))
    log_p1, log_p2 = log_normal(x, m1, v1), log_normal(x, m2, v2)
    log_q = log_normal(x, proposal_mean, proposal_var)
    log_unnormalised_g = 0.5 * (log_p1 + log_p2)
    log_z = np.log(np.mean(np.exp(log_unnormalised_g - log_q)))
    log_g = log_unnormalised_g - log_z
    weights = np.exp(log_g - log_q)
    from_g = lambda log_p: np.mean(weights * (log_g - log_p))  # KL(g || p)
    monte_carlo = 0.5 * from_g(log_p1) + 0.5 * from_g(log_p2)
    assert closed == pytest.approx(monte_carlo, rel=0.02)
    assert closed == pytest.approx(-log_z, rel=0.02)  # the Bhattacharyya distance

    # The other orientation, 1/2 KL(p1||g) + 1/2 KL(p2||g), differs when the variances differ ...
    def to_g(mean, var):
        samples = mean + np.sqrt(var) * rng.normal(size=(400_000, 3))
        g = 0.5 * (log_normal(samples, m1, v1) + log_normal(samples, m2, v2)) - log_z
        return np.mean(log_normal(samples, mean, var) - g)

    other = 0.5 * to_g(m1, v1) + 0.5 * to_g(m2, v2)
    assert abs(other - closed) > 0.2 * closed
    # ... and coincides with it for equal variances ((m1 - m2)^2 / (8 v) per dimension).
    equal = float(geometric_js(jnp.asarray(m1), jnp.zeros(3), jnp.asarray(m2), jnp.zeros(3)))
    assert equal == pytest.approx(((m1 - m2) ** 2).sum() / 8, rel=1e-6)


def test_pairwise_gjs_and_disagreement():
    means = jnp.array([[[0.0]], [[2.0]], [[2.0]]])  # 3 members, batch 1, 1 dim
    logvars = jnp.zeros_like(means)
    assert float(mean_pairwise_gjs(means, logvars)[0]) == pytest.approx((0.5 + 0.5 + 0.0) / 3, abs=1e-6)
    assert float(disagreement(means)[0]) == pytest.approx(float(np.std([0.0, 2.0, 2.0])), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_gjs(means[:1], logvars[:1])


# ---- a linear system with a terminal rule -----------------------------------------------------------------
OBS_DIM, ACT_DIM = 4, 2


def linear_system(size: int, seed: int, name: str = "linear-synthetic") -> Dataset:
    """s' = s + 0.1 A s + 0.5 B a (+ small noise), r = s_0 - |a|^2, terminal where s'_0 > 1.2."""
    system = np.random.default_rng(123)
    a_matrix, b_matrix = system.normal(size=(OBS_DIM, OBS_DIM)), system.normal(size=(ACT_DIM, OBS_DIM))
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(size, OBS_DIM)).astype(np.float32)
    actions = rng.uniform(-1, 1, (size, ACT_DIM)).astype(np.float32)
    next_obs = (obs + 0.1 * obs @ a_matrix + 0.5 * actions @ b_matrix
                + 0.01 * rng.normal(size=obs.shape)).astype(np.float32)
    rewards = (obs[:, 0] - (actions**2).sum(1)).astype(np.float32)
    terminals = next_obs[:, 0] > 1.2
    timeouts = np.zeros(size, bool)
    timeouts[49::50] = ~terminals[49::50]
    return Dataset(obs, actions, rewards, next_obs, terminals, timeouts, name=name)


CONFIG = EnsembleConfig(members=4, elites=3, hidden_dims=(32, 32), batch_size=128, max_steps=1500, eval_every=250,
                        patience=3, termination_hidden_dims=(32, 32), termination_steps=1000)


@pytest.fixture(scope="module")
def trained():
    dataset = linear_system(3000, seed=0)
    model, report = ensemble_training.train_ensemble(dataset, CONFIG, seed=0, progress=False)
    return dataset, model, report


def test_ensemble_learns_the_linear_system(trained):
    dataset, model, report = trained
    initial, final = np.asarray(report["member_heldout_mse_initial"]), np.asarray(report["member_heldout_mse"])
    assert np.all(final < 0.05 * initial)
    assert report["obs_delta_mse"] < 0.05 * report["obs_delta_mse_baseline"]
    assert report["reward_mse"] < 0.05 * report["reward_mse_baseline"]
    assert report["heldout_nll"] < 0.0  # sharper than a unit Gaussian in normalised units
    fresh = linear_system(500, seed=1)
    next_obs, rewards, dones = jax.jit(ensemble.model_step)(model, fresh.observations, fresh.actions,
                                                           jax.random.PRNGKey(0))
    assert np.mean((np.asarray(next_obs) - fresh.next_observations) ** 2) < 0.01
    assert np.mean((np.asarray(rewards) - fresh.rewards) ** 2) < 0.05


def test_elites_are_the_members_with_lowest_heldout_error(trained):
    dataset, model, report = trained
    _, heldout = common.holdout_split(dataset, CONFIG.holdout_fraction, 0)  # the split training used
    stats = model["stats"]
    inputs = (np.concatenate([heldout.observations, heldout.actions], -1) - stats["inputs"]["mean"]) / stats["inputs"]["std"]
    targets = np.concatenate([heldout.next_observations - heldout.observations, heldout.rewards[:, None]], -1)
    targets = (targets - stats["targets"]["mean"]) / stats["targets"]["std"]
    net = ensemble.member_network(model["config"], OBS_DIM + 1)
    means, _ = jax.vmap(net.apply, in_axes=(0, None))(model["params"], inputs)
    member_mse = np.asarray(((means - targets) ** 2).mean((1, 2)))
    np.testing.assert_allclose(member_mse, report["member_heldout_mse"], rtol=1e-4)
    assert sorted(report["elites"]) == sorted(np.argsort(member_mse)[: CONFIG.elites].tolist())
    assert np.asarray(model["elites"]).tolist() == report["elites"]


def test_member_step_uses_elite_row_mod_elites(trained):
    _, model, _ = trained
    # Near-zero variance makes each prediction its member's mean, so the row -> member assignment is visible.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, -30.0) if path[-1].key in ("max_logvar", "min_logvar") else x,
        model["params"])
    sharp = dict(model, params=params)
    obs, actions = np.ones((7, OBS_DIM), np.float32), np.zeros((7, ACT_DIM), np.float32)
    means, _ = ensemble.elite_predictions(sharp, obs, actions)
    stats = sharp["stats"]["targets"]
    expected = obs + np.asarray(stats["mean"] + stats["std"] * means)[np.arange(7) % 3, np.arange(7), :-1]
    next_obs, _, _ = ensemble.member_step(sharp, obs, actions, jax.random.PRNGKey(0))
    np.testing.assert_allclose(next_obs, expected, rtol=1e-5, atol=1e-5)


def test_learned_termination_separates_the_rule(trained):
    _, model, report = trained
    assert model["config"].termination == "learned"
    assert report["termination_heldout_balanced_accuracy"] > 0.9
    fresh = linear_system(2000, seed=2)
    predicted = np.asarray(ensemble.predict_done(model, fresh.observations, fresh.actions, fresh.next_observations))
    truth = fresh.terminals
    assert 0.5 * ((predicted[truth]).mean() + (~predicted[~truth]).mean()) > 0.9


def test_save_load_round_trip_gives_identical_predictions(trained, tmp_path):
    _, model, _ = trained
    ensemble.save_model(model, tmp_path / "wm", {"note": "test"})
    loaded = ensemble.load_model(tmp_path / "wm.msgpack")
    assert loaded["config"] == model["config"]
    obs, actions = linear_system(64, seed=3).observations, linear_system(64, seed=3).actions
    for fn in (lambda m: ensemble.imagine_step(m, obs, actions, jax.random.PRNGKey(5)),
               lambda m: ensemble.uncertainty(m, obs, actions, "disagreement")):
        for a, b in zip(jax.tree_util.tree_leaves(fn(model)), jax.tree_util.tree_leaves(fn(loaded))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="train it first"):
        ensemble.load_model(tmp_path / "missing")
    (tmp_path / "wm.msgpack").write_bytes(b"\x00corrupt")
    with pytest.raises(ValueError, match="cannot be read"):
        ensemble.load_model(tmp_path / "wm")


def test_kappa_is_the_quantile_and_flags_unfamiliar_inputs(trained):
    dataset, model, _ = trained
    kappa, values = ensemble.uncertainty_threshold(model, dataset.observations, dataset.actions, "gjs", 0.9,
                                                   batch_size=1024)
    assert values.shape == (dataset.size,)
    assert np.mean(values <= kappa) == pytest.approx(0.9, abs=0.01)
    far = np.full((32, OBS_DIM), 8.0, np.float32)  # eight standard deviations outside the data
    assert np.all(np.asarray(ensemble.uncertainty(model, far, dataset.actions[:32])) > kappa)


def test_termination_resolution():
    hopper_like = linear_system(100, seed=4, name="hopper-synthetic")
    resolved = ensemble_training.resolve_termination(EnsembleConfig(), hopper_like)
    assert (resolved.termination, resolved.termination_family) == ("known", "hopper")
    unknown = linear_system(100, seed=4)
    assert ensemble_training.resolve_termination(EnsembleConfig(), unknown).termination == "learned"
    no_terminals = unknown.replace(terminals=np.zeros(100, bool))
    assert ensemble_training.resolve_termination(EnsembleConfig(), no_terminals).termination == "never"
    with pytest.raises(ValueError, match="no known termination"):
        ensemble_training.resolve_termination(EnsembleConfig(termination="known"), unknown)
    with pytest.raises(ValueError, match="elites"):
        EnsembleConfig(members=3, elites=4)
    assert dataclasses.replace(CONFIG, members=5).members == 5
