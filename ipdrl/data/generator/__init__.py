"""D4RL-recipe dataset generation with a JAX SAC behaviour agent (``ipdrl data generate``)."""

from ipdrl.data.generator.config import DEFAULT_THRESHOLDS, GenerateConfig
from ipdrl.data.generator.recipe import RECIPES, generate
from ipdrl.data.generator.sac import SACTrainer

__all__ = ["DEFAULT_THRESHOLDS", "GenerateConfig", "RECIPES", "SACTrainer", "generate"]
