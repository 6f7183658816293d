"""Hyperparameter tuning on your own machine: the cloud tuner's search space, searched with Optuna."""

PRUNERS = ("hyperband", "median", "none")  # --pruner: Optuna's HyperbandPruner, MedianPruner, none
