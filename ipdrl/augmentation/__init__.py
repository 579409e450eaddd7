"""IPD stage 3: find sub-optimal states in a dataset and add MPC-planned imagined continuations from them.


1. Sub-optimality of every dataset state (n-step, clipped at the episode end, in V's units):
       delta_t = V(s_t) - [sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n})]
   Branch points: the top ``branch_fraction`` of each trajectory by delta (delta > 0), or every state with
   delta > ``branch_threshold``; tried in order of decreasing delta.
2. From a batch of branch points at once, a receding-horizon rollout of length L in the ensemble model: at each
   step :func:`ipdrl.planning.plan` (MPPI, warm-started from the previous plan) picks the action (``greedy-q``
   mode: argmax Q over sampled policy actions instead). The rollout is cut before the first step with
   U(s, a) > kappa and after a predicted termination.
3. Acceptance: the imagined value ``sum_{k<l} gamma^k r_k + gamma^l V(s_l)`` must beat the real continuation
   from the same state over the same l steps. Rejections are counted by reason: 'uncertainty' (cut shorter than
   ``min_rollout_length``), 'termination' (predicted to terminate) or 'not_better'.
4. Every accepted segment becomes a new episode: the ``prefix_length`` real steps before the branch point, then
   the imagined steps. ``D_aug = D + new episodes``, until the imagined transitions reach ``ratio`` times the
   real ones (more passes with fresh randomness when one pass over the branch points is not enough).

Rewards, observations and actions of ``D_aug`` are in raw env units like the data. Its ``infos`` hold, for every
transition, ``return_to_go`` (discounted, scaled-reward units, bootstrapped with V where an episode ends without
termination), ``timesteps`` (position in the original episode) and ``imagined``.
"""

from ipdrl.augmentation.config import BUDGETS, MODES, REJECTIONS, AugmentConfig
from ipdrl.augmentation.episodes import added_episodes, copied_prefixes, imagined_steps
from ipdrl.augmentation.orchestration import augment
from ipdrl.augmentation.report import plot_report
from ipdrl.augmentation.values import ValueFunctions, max_value_relabel, return_labels

__all__ = ["AugmentConfig", "BUDGETS", "MODES", "REJECTIONS", "ValueFunctions", "added_episodes", "augment",
           "copied_prefixes", "imagined_steps", "max_value_relabel", "plot_report", "return_labels"]
