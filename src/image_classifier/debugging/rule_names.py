"""The debugger rules' names, parameters and defaults, readable without smdebug.

The rule classes (`debugging.rules`, which needs smdebug, the `train` extra) take their
defaults from here, so the hyperparameters (`debug-stop-on`) and the launchers know the rules
on a machine with only the `launch` extra. Defaults are AWS's ("List of Debugger built-in
rules", https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html) unless a
rule's docstring in `debugging.rules` says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

# AWS rule name → its parameters' defaults, in the order the rules run and are reported
_DEFAULTS: dict[str, dict[str, Any]] = {
    "VanishingGradient": {"threshold": 1e-7},  # mean |gradient| below it fires
    "ExplodingTensor": {"collection_names": "",  # comma-separated; "" is every collection saved
                        "only_nan": False},       # True: ±inf is allowed, only NaN fires
    "LossNotDecreasing": {"num_steps": 10, "diff_percent": 0.1,  # % the mean loss must fall every num_steps
                          "increase_threshold_percent": 5.0, "mode": "TRAIN"},
    "Overfit": {"ratio_threshold": 0.1, "patience": 1, "start_step": 0},
    "Overtraining": {"patience_train": 5, "patience_validation": 10, "delta": 0.01},  # patience in passes
    "PoorWeightInitialization": {"activation_inputs_regex": ".*relu_input", "threshold": 10.0,
                                 "distribution_range": 0.001, "patience": 5, "steps": 10},
    "DeadRelu": {"tensor_regex": ".*relu_output", "threshold_inactivity": 1.0,  # % activity of a dead unit
                 "threshold_layer": 50.0},                                      # % dead units of a bad layer
    "WeightUpdateRatio": {"large_threshold": 10.0, "small_threshold": 1e-8, "epsilon": 1e-9},
    "ClassImbalance": {"threshold_imbalance": 10.0, "threshold_misprediction": 0.7, "samples": 500,
                       "argmax": False, "labels_regex": ".*labels", "predictions_regex": ".*predictions"},
    "AllZero": {"collection_names": "weights,gradients", "tensor_regex": "", "threshold": 100.0},  # % zeros
}

RULE_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType(defaults) for name, defaults in _DEFAULTS.items()})  # read-only: shared by every rule

RULE_NAMES: tuple[str, ...] = tuple(RULE_DEFAULTS)
