"""World models: IPD's uncertainty-aware ensemble (:mod:`.ensemble`, trained by :mod:`.ensemble_training`), and
DWM-MPC's generative next-state models (:mod:`.generative`: :mod:`.diffusion`, :mod:`.meanflow`) with a reward model
(:mod:`.reward`). :mod:`.common` holds what they share: the held-out split, a regression learner, persistence."""

from ipdrl.world_models.ensemble import EnsembleConfig, EnsembleModel, load_model, save_model
from ipdrl.world_models.ensemble_training import train_ensemble

__all__ = ["EnsembleConfig", "EnsembleModel", "load_model", "save_model", "train_ensemble"]
