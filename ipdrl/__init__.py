"""ipdrl: offline RL with planning in learned world models (IPD, DWM-MPC) and fast JAX baselines."""

__version__ = "0.1.0"
