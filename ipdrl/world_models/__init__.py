"""World models: IPD's uncertainty-aware ensemble (:mod:`.ensemble`, :mod:`.uncertainty`) and DWM-MPC's
diffusion / MeanFlow transition models and reward model (:mod:`.diffusion`, :mod:`.meanflow`, :mod:`.reward`).

Note: the package attribute ``uncertainty`` is the function ``ensemble.uncertainty(model, obs, actions, kind)``;
import the divergence measures with ``from ipdrl.world_models.uncertainty import ...``.
"""

from ipdrl.world_models.ensemble import (
    EnsembleConfig,
    EnsembleModel,
    imagine_step,
    load_model,
    member_step,
    model_step,
    save_model,
    train_ensemble,
    uncertainty,
    uncertainty_threshold,
)
from ipdrl.world_models.uncertainty import disagreement, geometric_js, mean_pairwise_gjs

__all__ = [
    "EnsembleConfig",
    "EnsembleModel",
    "disagreement",
    "geometric_js",
    "imagine_step",
    "load_model",
    "mean_pairwise_gjs",
    "member_step",
    "model_step",
    "save_model",
    "train_ensemble",
    "uncertainty",
    "uncertainty_threshold",
]
