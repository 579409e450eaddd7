"""Planning in a learned model: MPPI over action sequences (:mod:`.mppi`, IPD's stage 3) and gradient ascent on a
policy's weights through a differentiable model (:mod:`.policy_ascent`, DWM-MPC). Both are pure functions over a
narrow interface of model, reward, value and policy functions."""

from ipdrl.planning.mppi import PlannerConfig, greedy_q_action, plan, policy_warm_start, shift_plan
from ipdrl.planning.policy_ascent import AscentConfig, Imagination

__all__ = ["AscentConfig", "Imagination", "PlannerConfig", "greedy_q_action", "plan", "policy_warm_start",
           "shift_plan"]
