"""One optimiser step, written once: the gradient of a loss, the optimiser's update, the new parameters."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import optax

Params = Any


class GradientStep(NamedTuple):
    params: Params
    opt_state: Any
    loss: jax.Array
    aux: Any
    grads: Params


def apply_gradients(optimizer: optax.GradientTransformation, params: Params, opt_state: Any, grads: Params
                    ) -> tuple[Params, Any]:
    """``params`` moved by ``optimizer`` along ``grads`` (to be minimised): (new params, new optimiser state)."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def gradient_step(loss_fn: Callable[[Params], Any], optimizer: optax.GradientTransformation, params: Params,
                  opt_state: Any, has_aux: bool = False) -> GradientStep:
    """One optimiser step on ``loss_fn(params)`` (which returns ``(loss, aux)`` when ``has_aux``)."""
    if has_aux:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    else:
        (loss, grads), aux = jax.value_and_grad(loss_fn)(params), None
    params, opt_state = apply_gradients(optimizer, params, opt_state, grads)
    return GradientStep(params, opt_state, loss, aux, grads)


