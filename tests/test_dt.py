"""The causal transformer, the Decision Transformer learner, value guidance and the acting policy's return tokens."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_dataset
from ipdrl import envs
from ipdrl.algos import dt
from ipdrl.data.dataset import Dataset, to_device
from ipdrl.evaluation import evaluate
from ipdrl.training import fit
from ipdrl.transformer import STATE_TOKENS, Block, DecisionTransformer, Dropout, softmax

TINY = dict(context_length=4, embed_dim=16, num_layers=1, batch_size=16, warmup_steps=1, dropout=0.0)


def random_inputs(key, batch=2, length=4, obs_dim=3, act_dim=2):
    k1, k2, k3 = jax.random.split(key, 3)
    return (jax.random.normal(k1, (batch, length)), jax.random.normal(k2, (batch, length, obs_dim)),
            jax.random.uniform(k3, (batch, length, act_dim), minval=-1, maxval=1),
            jnp.tile(jnp.arange(length), (batch, 1)))


def test_dropout_drops_at_its_rate_and_keeps_the_mean():
    x = jnp.ones((4, 250_001))  # an odd size: the last 32-bit draw serves one element
    dropped = Dropout(0.1, deterministic=False).apply({}, x, rngs={"dropout": jax.random.PRNGKey(0)})
    again = Dropout(0.1, deterministic=False).apply({}, x, rngs={"dropout": jax.random.PRNGKey(0)})
    other = Dropout(0.1, deterministic=False).apply({}, x, rngs={"dropout": jax.random.PRNGKey(1)})
    share = float((dropped == 0).mean())
    assert abs(share - 0.1) < 0.002  # 1M elements: the binomial's std is 0.0003
    np.testing.assert_allclose(dropped[dropped != 0], 1 / 0.9, rtol=1e-6)
    assert abs(float(dropped.mean()) - 1.0) < 0.005
    np.testing.assert_array_equal(dropped, again)
    assert float((dropped != other).mean()) > 0.1
    # Both halves of every 32-bit draw are used: the two halves of the flattened mask drop independently.
    flat = (dropped == 0).reshape(-1)
    assert abs(float(flat[: flat.size // 2].mean()) - float(flat[flat.size // 2:].mean())) < 0.003
    assert Dropout(0.1, deterministic=True).apply({}, x) is x


def test_softmax_and_its_gradient_are_jax_softmax():
    logits = 3 * jax.random.normal(jax.random.PRNGKey(0), (2, 1, 5, 7))
    weights = jax.random.normal(jax.random.PRNGKey(1), logits.shape)
    loss = lambda function: lambda x: jnp.sin(function(x) * weights).sum()
    np.testing.assert_allclose(softmax(logits), jax.nn.softmax(logits, axis=-1), rtol=1e-6)
    plain = lambda x: jax.nn.softmax(x, axis=-1)
    np.testing.assert_allclose(jax.grad(loss(softmax))(logits), jax.grad(loss(plain))(logits), rtol=1e-5, atol=1e-7)


def test_transformer_is_causal():
    model = DecisionTransformer(act_dim=2, embed_dim=16, num_layers=2, num_heads=2, dropout=0.0, max_timestep=10)
    returns, obs, actions, timesteps = random_inputs(jax.random.PRNGKey(0))
    params = model.init(jax.random.PRNGKey(1), returns, obs, actions, timesteps)
    apply = jax.jit(model.apply)
    base = apply(params, returns, obs, actions, timesteps)
    assert base.shape == (2, 4, 2) and jnp.all(jnp.abs(base) <= 1)

    # The action of step 2 is read at s_2, before a_2: changing a_2 may change steps 3+, never steps 0-2.
    changed = apply(params, returns, obs, actions.at[:, 2].set(0.9), timesteps)
    np.testing.assert_allclose(changed[:, :3], base[:, :3], atol=1e-6)
    assert not np.allclose(changed[:, 3], base[:, 3])
    # Changing the return or state of step 3 leaves steps 0-2 alone and does change step 3.
    for later in (apply(params, returns.at[:, 3].add(5.0), obs, actions, timesteps),
                  apply(params, returns, obs.at[:, 3].add(1.0), actions, timesteps)):
        np.testing.assert_allclose(later[:, :3], base[:, :3], atol=1e-6)
        assert not np.allclose(later[:, 3], base[:, 3])


def test_block_asked_at_state_tokens_matches_the_full_block():
    """The last block computes only the state tokens' outputs; they must equal the full block's at those tokens."""
    block = Block(embed_dim=16, num_heads=2, dropout=0.0)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 16))
    params = block.init(jax.random.PRNGKey(1), x, False)
    full = block.apply(params, x, False)
    states_only = block.apply(params, x, False, STATE_TOKENS)
    assert states_only.shape == (2, 4, 16)
    np.testing.assert_allclose(states_only, full[:, 1::3], atol=1e-5)


def short_episode_dataset(length: int = 3, episodes: int = 6) -> Dataset:
    return synthetic_dataset(episodes=episodes, length=length, obs_dim=3, act_dim=2)


def test_padding_affects_neither_real_outputs_nor_the_loss():
    dataset = short_episode_dataset(length=3)  # episodes shorter than K = 4: every segment is padded
    learner = dt.make_learner(dt.Config(**TINY), dataset)
    state = learner.init(jax.random.PRNGKey(0))
    batch = learner.sample(to_device(learner.fields), jax.random.PRNGKey(1))
    assert batch["mask"].shape == (16, 4) and batch["mask"][:, 0].all() and not batch["mask"][:, -1].any()
    real_first = (np.diff(np.asarray(batch["mask"]), axis=1) <= 0).all()  # right padding: 1s then 0s
    assert real_first

    padded = batch["mask"][..., None] == 0
    scrambled = dict(batch, actions=jnp.where(padded, 0.77, batch["actions"]),
                     observations=jnp.where(padded, 123.0, batch["observations"]),
                     returns=jnp.where(padded[..., 0], -9.0, batch["returns"]))
    update = jax.jit(learner.update)
    _, metrics = update(state, batch, jax.random.PRNGKey(2))
    _, scrambled_metrics = update(state, scrambled, jax.random.PRNGKey(2))
    np.testing.assert_allclose(scrambled_metrics["train/action_mse"], metrics["train/action_mse"], rtol=1e-6)


def test_loss_mask_keeps_masked_steps_as_context_only():
    dataset = short_episode_dataset(length=6)
    learn = np.arange(dataset.size) % 2 == 0
    learner = dt.make_learner(dt.Config(**TINY), dataset, loss_mask=learn)
    state = learner.init(jax.random.PRNGKey(0))
    batch = learner.sample(to_device(learner.fields), jax.random.PRNGKey(1))
    update = jax.jit(learner.update)
    _, metrics = update(state, batch, jax.random.PRNGKey(2))
    # Actions of masked-out steps do not enter the loss (they do enter later steps' inputs, as context) ...
    context = (batch["learn"] == 0)[..., None] & (np.arange(4) == 3)[None, :, None]  # last step: nobody reads it
    _, changed = update(state, dict(batch, actions=jnp.where(context, 0.77, batch["actions"])), jax.random.PRNGKey(2))
    np.testing.assert_allclose(changed["train/action_mse"], metrics["train/action_mse"], rtol=1e-6)
    # ... and with every step masked out nothing is learned.
    _, nothing = update(state, dict(batch, learn=jnp.zeros_like(batch["learn"])), jax.random.PRNGKey(2))
    assert float(nothing["train/loss"]) == 0.0 and float(nothing["train/grad_norm"]) == 0.0
    with pytest.raises(ValueError, match="loss_mask"):
        dt.make_learner(dt.Config(**TINY), dataset, loss_mask=learn[:-1])


def test_critic_action_weights_weight_each_steps_imitation_error():
    dataset = short_episode_dataset(length=6)
    learn = dataset.actions[:, 0] > 0
    indicator = dt.Critic(state={}, q_value=lambda s, o, a: -(a ** 2).sum(-1), value=lambda s, o: o.sum(-1),
                          action_weight=lambda s, o, a: (a[..., 0] > 0).astype(jnp.float32))
    scaled = indicator._replace(action_weight=lambda s, o, a: 7.0 * (a[..., 0] > 0))
    masked = dt.make_learner(dt.Config(**TINY), dataset, loss_mask=learn)
    state = masked.init(jax.random.PRNGKey(0))
    batch = masked.sample(to_device(masked.fields), jax.random.PRNGKey(1))
    _, expected = jax.jit(masked.update)(state, batch, jax.random.PRNGKey(2))
    # 0/1 weights are a loss mask, and the weights' scale does not matter (a weighted mean).
    for critic in (indicator, scaled):
        learner = dt.make_learner(dt.Config(**TINY), dataset, critic=critic)
        unmasked = {k: v for k, v in batch.items() if k != "learn"}
        _, metrics = jax.jit(learner.update)(dict(state, critic={}), unmasked, jax.random.PRNGKey(2))
        for name in ("train/action_mse", "train/grad_norm"):
            np.testing.assert_allclose(metrics[name], expected[name], rtol=1e-5)


def test_dt_learns_a_predictable_mapping():
    dataset = synthetic_dataset(episodes=8, length=30, obs_dim=4, act_dim=2)
    weights = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    dataset = dataset.replace(actions=np.tanh(dataset.observations @ weights))  # a = tanh(W s)
    config = dt.Config(**dict(TINY, embed_dim=32, batch_size=32, learning_rate=3e-3))
    learner = dt.make_learner(config, dataset)
    losses = []
    fit(learner, 100, seed=0, log_every=25, on_chunk=lambda step, state, m: losses.append(m["train/action_mse"]))
    variance = float(dataset.actions.var(0).mean())
    assert losses[-1] < 0.02 * variance and losses[-1] < losses[0] / 3


def toy_critic(target: float = 0.5) -> dt.Critic:
    """Q(s, a) = -|a - target|^2: the value-guided loss should pull actions toward ``target``."""
    return dt.Critic(state={"target": jnp.asarray(target)},
                     q_value=lambda state, obs, actions: -((actions - state["target"]) ** 2).sum(-1),
                     value=lambda state, obs: obs.sum(-1))


def test_value_guidance_pushes_actions_toward_higher_q():
    # Random data actions (mean 0) are unpredictable, so imitation alone predicts ~0 (Q ~ -0.5); the guidance
    # term must move the predictions to the critic's optimum 0.5.
    dataset = synthetic_dataset(episodes=6, length=20, obs_dim=3, act_dim=2)
    config = dt.Config(**dict(TINY, learning_rate=3e-3))
    learner = dt.make_learner(config, dataset, critic=toy_critic(), alpha=5.0)
    state = fit(learner, 100, seed=0, log_every=50)
    batch = learner.sample(to_device(learner.fields), jax.random.PRNGKey(5))
    normalized = (batch["observations"] - state["obs_stats"]["mean"]) / state["obs_stats"]["std"]
    predicted = jax.jit(dt.network(config, 2).apply)(state["params"], batch["returns"], normalized,
                                                     batch["actions"], batch["timesteps"])
    assert float(predicted.mean()) > 0.3
    assert float(toy_critic().q_value({"target": 0.5}, None, predicted).mean()) > -0.2

    # The guidance term alone: its gradient raises Q at real steps, equally, and ignores padding.
    q = jnp.array([[-1.0, -2.0, -3.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    grad = jax.grad(lambda q: dt.value_guidance(q, mask))(q)
    np.testing.assert_allclose(grad, [[0.5 / 1.5, 0.5 / 1.5, 0.0]], rtol=1e-5)


def step_policy(learner, params, observations, rewards):
    """Act through ``observations`` (steps, envs, obs_dim) with the given previous rewards; returns the carries."""
    carry = learner.policy.init_carry(params, observations.shape[1])
    act = jax.jit(learner.policy.act)
    carries = []
    for obs, reward in zip(observations, rewards):
        carry, _ = act(params, carry, obs, reward, jax.random.PRNGKey(0))
        carries.append(carry)
    return carries


def test_dynamic_return_token_is_value_of_current_state_every_step():
    dataset = synthetic_dataset(episodes=4, length=10, obs_dim=3, act_dim=2)
    config = dt.Config(**dict(TINY, return_scale=10.0))
    returns = dt.ReturnTokens(labels=np.zeros(dataset.size), timesteps=dataset.timesteps(), target=50.0,
                              value_factor=1.5)
    learner = dt.make_learner(config, dataset, returns=returns, critic=toy_critic())
    params = learner.policy_params(learner.init(jax.random.PRNGKey(0)))
    observations = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2, 3)), jnp.float32)
    rewards = jnp.full((6, 2), 100.0)  # large rewards: a decremented token would fall fast
    for t, carry in enumerate(step_policy(learner, params, observations, rewards)):
        position = min(t, config.context_length - 1)
        expected = 1.5 * observations[t].sum(-1) / 10.0  # value_factor * V(s_t) / return_scale
        np.testing.assert_allclose(carry["returns"][:, position], expected, rtol=1e-5)


def test_classic_return_token_is_decremented_by_observed_rewards():
    dataset = synthetic_dataset(episodes=4, length=10, obs_dim=3, act_dim=2)
    config = dt.Config(**dict(TINY, return_scale=100.0, target_return=300.0))
    learner = dt.make_learner(config, dataset)
    params = learner.policy_params(learner.init(jax.random.PRNGKey(0)))
    rewards = jnp.asarray([[0.0], [10.0], [20.0], [5.0], [1.0], [2.0]])
    carries = step_policy(learner, params, jnp.zeros((6, 1, 3)), rewards)
    # K = 4: after six steps the window holds steps 2..5 with targets 300 - cumulative rewards.
    np.testing.assert_allclose(carries[-1]["returns"][0], np.array([270.0, 265.0, 264.0, 262.0]) / 100.0, rtol=1e-6)
    np.testing.assert_array_equal(carries[-1]["timesteps"][0], [2, 3, 4, 5])
    np.testing.assert_allclose(carries[2]["returns"][0, :3], np.array([300.0, 290.0, 270.0]) / 100.0, rtol=1e-6)

    # Discounted, scaled variant (IPD's classic mode): R' = (R - (r * scale + shift)) / gamma.
    returns = dt.ReturnTokens(labels=np.zeros(dataset.size), timesteps=dataset.timesteps(), target=50.0,
                              reward_scale=0.5, reward_shift=-1.0, discount=0.9)
    learner = dt.make_learner(config, dataset, returns=returns)
    params = learner.policy_params(learner.init(jax.random.PRNGKey(0)))
    carries = step_policy(learner, params, jnp.zeros((2, 1, 3)), jnp.asarray([[0.0], [10.0]]))
    np.testing.assert_allclose(carries[1]["returns"][0, 1] * 100.0, (50.0 - (10.0 * 0.5 - 1.0)) / 0.9, rtol=1e-5)


def test_acting_window_matches_the_training_layout():
    """The action at step t is the network's output at position t of a right-padded window, as in training."""
    dataset = synthetic_dataset(episodes=4, length=10, obs_dim=3, act_dim=2)
    config = dt.Config(**TINY)
    learner = dt.make_learner(config, dataset)
    params = learner.policy_params(learner.init(jax.random.PRNGKey(3)))
    observations = jnp.asarray(np.random.default_rng(0).normal(size=(3, 1, 3)), jnp.float32)
    carry = learner.policy.init_carry(params, 1)
    actions = []
    for obs in observations:
        carry, action = learner.policy.act(params, carry, obs, jnp.zeros(1), jax.random.PRNGKey(0))
        actions.append(action)
    normalized = (observations[:, 0] - params["obs_stats"]["mean"]) / params["obs_stats"]["std"]
    window_obs = jnp.zeros((1, 4, 3)).at[0, :3].set(normalized)
    window_actions = jnp.zeros((1, 4, 2)).at[0, :2].set(jnp.concatenate(actions[:2]))
    window_returns = jnp.full((1, 4), config.target_return / config.return_scale).at[0, 3].set(0.0)
    expected = dt.network(config, 2).apply(params["params"], window_returns, window_obs, window_actions,
                                           jnp.arange(4)[None])
    np.testing.assert_allclose(actions[2][0], expected[0, 2], atol=1e-5)


def test_misconfiguration_is_a_clear_error():
    dataset = synthetic_dataset()
    with pytest.raises(ValueError, match="need a critic"):
        dt.make_learner(dt.Config(**TINY), dataset, alpha=1.0)
    with pytest.raises(ValueError, match="one entry per transition"):
        dt.make_learner(dt.Config(**TINY), dataset, returns=dt.ReturnTokens(np.zeros(3), np.zeros(3), 1.0))


def test_dt_policy_runs_in_hopper_evaluation():
    dataset = synthetic_dataset(episodes=4, length=10, obs_dim=11, act_dim=3)
    learner = dt.make_learner(dt.Config(**TINY), dataset)
    params = learner.policy_params(learner.init(jax.random.PRNGKey(0)))
    result = evaluate(learner.policy, params, "Hopper-v5", episodes=2, seed=0, reference=envs.reference_for("hopper"), max_steps=15)
    assert len(result["returns"]) == 2 and all(1 <= n <= 15 for n in result["lengths"])
    assert np.isfinite(result["normalized_mean"])


def test_return_candidates_act_with_the_action_the_critic_rates_highest():
    dataset = synthetic_dataset(episodes=4, length=10, obs_dim=3, act_dim=2)
    config = dt.Config(**dict(TINY, return_scale=1.0))
    base = dict(labels=np.zeros(dataset.size), timesteps=dataset.timesteps(), target=1.0, value_factor=1.0)
    learner = dt.make_learner(config, dataset, returns=dt.ReturnTokens(**base, candidates=(1.0, 5.0, 25.0)),
                              critic=toy_critic(0.3))
    params = learner.policy_params(learner.init(jax.random.PRNGKey(0)))
    params["params"] = jax.tree_util.tree_map(lambda x: 5.0 * x, params["params"])  # tokens move the actions
    obs = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3)), jnp.float32)
    carry, action = jax.jit(learner.policy.act)(params, learner.policy.init_carry(params, 2), obs, jnp.zeros(2),
                                                jax.random.PRNGKey(0))
    singles = []
    for factor in (1.0, 5.0, 25.0):
        one = dt.make_learner(config, dataset, returns=dt.ReturnTokens(**dict(base, value_factor=factor)),
                              critic=toy_critic(0.3))
        singles.append(jax.jit(one.policy.act)(params, one.policy.init_carry(params, 2), obs, jnp.zeros(2),
                                               jax.random.PRNGKey(0))[1])
    q = np.stack([np.asarray(toy_critic(0.3).q_value({"target": 0.3}, obs, a)) for a in singles])
    assert len({tuple(np.round(np.asarray(a).ravel(), 5)) for a in singles}) == 3  # the candidates differ
    np.testing.assert_allclose(action, np.stack(singles)[q.argmax(0), np.arange(2)], rtol=1e-5, atol=1e-6)
    best_token = np.asarray([1.0, 5.0, 25.0])[q.argmax(0)] * obs.sum(-1)
    np.testing.assert_allclose(carry["returns"][:, 0], best_token, rtol=1e-5)  # the chosen token is remembered


def test_cosine_schedule_ends_at_zero_and_ema_weights_are_what_the_policy_acts_with():
    dataset = synthetic_dataset(episodes=4, length=10, obs_dim=3, act_dim=2)
    config = dt.Config(**dict(TINY, steps=40, warmup_steps=10, lr_schedule="cosine", ema=0.9, learning_rate=1e-2))
    learner = dt.make_learner(config, dataset)
    state = fit(learner, 40, seed=0, log_every=20)
    params = learner.policy_params(state)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params["params"]),
                                                     jax.tree_util.tree_leaves(state["ema_params"])))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(state["ema_params"]),
                                                         jax.tree_util.tree_leaves(state["params"])))
    # A long average (over ~10k updates) after 40 holds no trace of the random initial weights: it forgets fast early.
    long = dt.make_learner(dataclasses.replace(config, ema=0.9999), dataset)
    initial, trained = long.init(jax.random.PRNGKey(0)), fit(long, 40, seed=0, log_every=20)
    distance = lambda a, b: sum(float(jnp.abs(x - y).sum()) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                            jax.tree_util.tree_leaves(b)))
    assert distance(trained["ema_params"], trained["params"]) < 0.2 * distance(trained["ema_params"], initial["params"])
    # The schedule itself: warm-up to the peak, then cosine down to zero at the last update.
    rates = []
    probe = dt.optimizer(config)
    opt_state = probe.init({"w": jnp.zeros(())})
    for _ in range(41):
        updates, opt_state = probe.update({"w": jnp.ones(())}, opt_state, {"w": jnp.zeros(())})
        rates.append(float(-updates["w"]))
    assert max(rates) == pytest.approx(1e-2, rel=0.05) and rates[-1] < 1e-4


def test_window_critic_targets_are_in_window_returns_then_the_bootstrap():
    from ipdrl.algos.window_critic import window_targets

    rewards = jnp.array([[1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    dones = jnp.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # window 0 ends at a terminal at step 2
    targets, learn = window_targets(rewards, dones, mask, end_value=jnp.array([100.0, 10.0]), discount=0.5)
    np.testing.assert_allclose(targets[0, :3], [1 + 0.5 * (2 + 0.5 * 3), 2 + 0.5 * 3, 3])  # no bootstrap: terminal
    np.testing.assert_allclose(targets[1], [1 + 0.5 * (1 + 0.5 * (1 + 0.5 * 10)), 1 + 0.5 * (1 + 0.5 * 10),
                                            1 + 0.5 * 10, 10])
    np.testing.assert_array_equal(learn, [[1, 1, 1, 0], [1, 1, 1, 0]])  # a bootstrapped last step does not learn


def test_an_ensemble_trains_its_members_apart_and_acts_with_their_mean_action():
    dataset = synthetic_dataset(episodes=4, length=10, obs_dim=3, act_dim=2)
    config = dt.Config(**dict(TINY, transformers=3, ema=0.9, learning_rate=1e-2, dropout=0.1))
    learner = dt.make_learner(config, dataset)
    state = fit(learner, 20, seed=0, log_every=10)
    without_ema = fit(dt.make_learner(dataclasses.replace(config, ema=0.0), dataset), 2, seed=0, log_every=1)
    assert "ema_params" not in without_ema and jax.tree_util.tree_leaves(without_ema["params"])[0].shape[0] == 3
    members = [jax.tree_util.tree_map(lambda x, i=i: x[i], state["ema_params"]) for i in range(3)]
    first_leaves = [jax.tree_util.tree_leaves(m)[0] for m in members]
    assert not np.allclose(first_leaves[0], first_leaves[1])  # each its own initialisation and dropout
    params = learner.policy_params(state)
    obs = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3)), jnp.float32)
    _, action = jax.jit(learner.policy.act)(params, learner.policy.init_carry(params, 2), obs, jnp.zeros(2),
                                            jax.random.PRNGKey(0))
    single = dt.make_learner(dataclasses.replace(config, transformers=1), dataset)
    one_action = lambda member: jax.jit(single.policy.act)(dict(params, params=member),
                                                          single.policy.init_carry(params, 2), obs, jnp.zeros(2),
                                                          jax.random.PRNGKey(0))[1]
    singles = np.stack([one_action(m) for m in members])
    np.testing.assert_allclose(action, singles.mean(0), rtol=1e-5, atol=1e-6)
    # 'critic': at every step the member action that the critic's Q rates highest.
    returns = dt.classic_returns(config, dataset)
    rated = dt.make_learner(dataclasses.replace(config, ensemble_action="critic"), dataset, returns=returns,
                            critic=toy_critic(0.3))
    params = dict(rated.policy_params(dict(state, critic=toy_critic(0.3).state)))
    _, chosen = jax.jit(rated.policy.act)(params, rated.policy.init_carry(params, 2), obs, jnp.zeros(2),
                                          jax.random.PRNGKey(0))
    q = -((singles - 0.3) ** 2).sum(-1)  # (members, envs)
    np.testing.assert_allclose(chosen, singles[q.argmax(0), np.arange(2)], rtol=1e-5, atol=1e-6)
    # The critic's proposals are candidates too: it takes one at its optimum, and ignores one far from it.
    for proposal, expected in ((0.3, np.full((2, 2), 0.3)), (5.0, np.asarray(chosen))):
        proposing = toy_critic(0.3)._replace(proposals=lambda state, obs, key, p=proposal: jnp.full((1, 2, 2), p))
        learner = dt.make_learner(dataclasses.replace(config, ensemble_action="critic"), dataset, returns=returns,
                                  critic=proposing)
        _, action = jax.jit(learner.policy.act)(params, learner.policy.init_carry(params, 2), obs, jnp.zeros(2),
                                                jax.random.PRNGKey(0))
        np.testing.assert_allclose(action, expected, rtol=1e-5, atol=1e-6)
    # One transformer with proposals: the critic chooses between its action and theirs.
    one = dt.make_learner(dataclasses.replace(config, transformers=1, ensemble_action="critic"), dataset,
                          returns=returns, critic=toy_critic(0.3)._replace(
                              proposals=lambda state, obs, key: jnp.full((1, 2, 2), 0.3)))
    first = dict(params, params=members[0])
    _, action = jax.jit(one.policy.act)(first, one.policy.init_carry(first, 2), obs, jnp.zeros(2),
                                        jax.random.PRNGKey(0))
    np.testing.assert_allclose(action, np.full((2, 2), 0.3), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="--ensemble-action critic rates the members' actions with a critic"):
        dt.make_learner(dataclasses.replace(config, ensemble_action="critic"), dataset)
    with pytest.raises(ValueError, match="--transformers must be >= 1"):
        dt.Config(**dict(TINY, transformers=0))
