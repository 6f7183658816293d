"""SageMaker Debugger's built-in rules, evaluated by the project on the tensors its smdebug hook saved.

AWS runs these rules only in its own rule containers, which need the SageMaker Debugger
service (closed to new customers). Here each rule is a `smdebug.rules.Rule` over a
`smdebug.trials` trial of the job's tensors, with the parameters and defaults of AWS's
documentation ("List of Debugger built-in rules",
https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html). Where AWS does
not publish an algorithm's detail, the rule's docstring says what was chosen and why.

Each rule is a module-level class registered by `@register_rule` under its class name (timm's
`@register_model` pattern); its parameters and their defaults are in `rule_names.RULE_DEFAULTS`,
which the hyperparameters and the launchers read without smdebug. This module imports smdebug
(the `train` extra): import it only where rules run.

Rules keep state between calls, so a `RuleSet` evaluates each step once: at the end of every
epoch over the steps saved since (which is also the end of training).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from smdebug.exceptions import RuleEvaluationConditionMet, StepUnavailable, TensorUnavailable, TensorUnavailableForStep
from smdebug.rules import Rule

from image_classifier.debugging.results import ERROR, ISSUES, NO_ISSUES, NOT_APPLICABLE, RuleResult
from image_classifier.debugging.rule_names import RULE_DEFAULTS

logger = logging.getLogger(__name__)

_rule_classes: dict[str, type[ProjectRule]] = {}  # AWS rule name → its class, filled by @register_rule


class NotApplicable(Exception):
    """The trial lacks what the rule reads (a collection not saved, no GPU, ...)."""


def register_rule(cls: type[ProjectRule]) -> type[ProjectRule]:
    """Class decorator: register a rule under its class name, with its defaults from `RULE_DEFAULTS`.

    Raises:
        ValueError: the class name has no entry in `rule_names.RULE_DEFAULTS`, or is registered already.
    """
    name = cls.__name__
    if name not in RULE_DEFAULTS:
        raise ValueError(f"rule {name} has no parameters in image_classifier.debugging.rule_names.RULE_DEFAULTS: "
                         f"add its entry there (its parameters and their defaults, {{}} if it takes none)")
    if name in _rule_classes:
        raise ValueError(f"rule {name} is registered twice: rename one of the classes")
    cls.defaults = RULE_DEFAULTS[name]
    _rule_classes[name] = cls
    return cls


class ProjectRule(Rule):
    """A rule with parameters, defaults and a message for each violation.

    A subclass implements `invoke_at_step(step) -> bool` (smdebug's contract: True when it fires
    at that global step) and, when it judges what several steps leave pending, `finish`.
    `@register_rule` sets `defaults` from `rule_names.RULE_DEFAULTS`.
    """

    defaults: Mapping[str, Any] = {}   # set by @register_rule: the rule's parameters and their defaults
    collections: tuple[str, ...] = ()  # collections the rule reads; none saved → NotApplicable

    def __init__(self, trial, **parameters):
        """
        Args:
            trial: an smdebug trial (`smdebug.trials.create_trial(path)`).
            **parameters: parameters over the rule's defaults.

        Raises:
            ValueError: a parameter the rule does not take (the message lists those it takes).
        """
        super().__init__(trial, action_str="")
        unknown = set(parameters) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.rule_name} has no parameter(s) {', '.join(sorted(unknown))}; "
                             f"it takes {', '.join(self.defaults)}")
        self.params = {**self.defaults, **parameters}
        self.messages: list[str] = []

    def check_applicable(self) -> None:
        """Raises NotApplicable when none of the rule's collections has a tensor."""
        if self.collections and not any(self._names(c) for c in self.collections):
            raise NotApplicable(f"no tensors in collection(s) {', '.join(self.collections)}: "
                                f"the hook configuration does not save them")

    def _names(self, collection: str, step: int | None = None) -> list[str]:
        try:
            return self.base_trial.tensor_names(collection=collection, step=step)
        except Exception:  # smdebug raises when the collection or step is unknown
            return []

    def value(self, name: str, step: int) -> np.ndarray | None:
        """The tensor `name` at `step` as float64, in its saved shape; None when not saved at that step."""
        try:
            return np.asarray(self.base_trial.tensor(name).value(step), dtype=np.float64)
        except TensorUnavailableForStep:
            return None

    def mode_of(self, step: int):
        """smdebug's mode (`smdebug.modes.TRAIN`, `EVAL`, ...) of a global step."""
        return self.base_trial.mode(step)

    def finish(self, step: int) -> bool:
        """Judge what is pending after the last step evaluated; True when the rule fires."""
        return False

    def fire(self, step: int, message: str) -> bool:
        """Record why the rule fires at `step`; True, for `return ... and self.fire(...)`."""
        self.messages.append(f"step {step}: {message}")
        return True

    def loss_at(self, step: int) -> float | None:
        """The mean of the losses saved at `step` (one loss module: its value), or None."""
        values = [v for v in (self.value(n, step) for n in self._names("losses", step)) if v is not None]
        return float(np.mean([v.mean() for v in values])) if values else None


@register_rule
class VanishingGradient(ProjectRule):
    """Fires when the mean of |gradient| of a tensor falls below `threshold` (AWS default 1e-7).

    AWS: "If the mean of the absolute values of the gradients drops below a specified
    threshold, the rule returns True." Judged per gradient tensor at each saved step.
    """

    collections = ("gradients",)

    def invoke_at_step(self, step):
        small = [n for n in self._names("gradients", step)
                 if (g := self.value(n, step)) is not None and np.abs(g).mean() < self.params["threshold"]]
        return bool(small) and self.fire(step, f"mean |gradient| < {self.params['threshold']:g} in "
                                               f"{len(small)} tensor(s): {', '.join(small[:5])}")


@register_rule
class ExplodingTensor(ProjectRule):
    """Fires when a saved floating-point tensor holds NaN, or ±inf unless `only_nan`.

    AWS: "detects whether the tensors emitted during training have non-finite values,
    either infinite or NaN". `collection_names` picks what is checked (AWS: all saved
    tensors when not given; here the same, by default every collection saved).
    """

    def invoke_at_step(self, step):
        collections = [c for c in str(self.params["collection_names"]).split(",") if c]
        names = (sorted({n for c in collections for n in self._names(c, step)}) if collections
                 else self.base_trial.tensor_names(step=step))
        bad = []
        for name in names:
            value = self.value(name, step)
            if value is None:
                continue
            broken = np.isnan(value).any() if self.params["only_nan"] else not np.isfinite(value).all()
            if broken:
                bad.append(name)
        return bool(bad) and self.fire(step, f"non-finite values in {len(bad)} tensor(s): {', '.join(bad[:5])}")


@register_rule
class LossNotDecreasing(ProjectRule):
    """Fires when the loss has not decreased by `diff_percent` % over `num_steps` steps.

    AWS defaults: num_steps 10 ("rule evaluation happens every num_steps"), diff_percent
    0.1 ("the minimum percentage difference by which the loss should decrease between
    num_steps"), increase_threshold_percent 5 ("the maximum threshold percent that loss is
    allowed to increase"). AWS compares the loss of one step with the loss `num_steps`
    earlier; one batch's loss is noisy, so here each side is the mean loss of the
    `num_steps` steps ending there (a chosen detail AWS does not publish). It fires when
    that mean fell by less than `diff_percent` %, naming a rise beyond
    `increase_threshold_percent` % as such. Mode: AWS looks at EVAL steps first when
    `mode` is not given; the default here is TRAIN, because this project's validation
    batches come in class order, so windows of them differ by class, not by progress.
    """

    collections = ("losses",)

    def __init__(self, trial, **parameters):
        super().__init__(trial, **parameters)
        self.losses: list[float] = []

    def invoke_at_step(self, step):
        if self.mode_of(step).name != self.params["mode"]:
            return False
        loss = self.loss_at(step)
        if loss is None:
            return False
        self.losses.append(loss)
        n = int(self.params["num_steps"])
        if len(self.losses) < 2 * n or len(self.losses) % n:
            return False
        before, now = np.mean(self.losses[-2 * n:-n]), np.mean(self.losses[-n:])
        change = (before - now) / abs(before) * 100 if before else 0.0
        if -change > self.params["increase_threshold_percent"]:
            return self.fire(step, f"mean loss rose {-change:.2f} % over {n} steps ({before:.4g} → {now:.4g})")
        if change < self.params["diff_percent"]:
            return self.fire(step, f"mean loss fell only {change:.3f} % over {n} steps "
                                   f"(< {self.params['diff_percent']} %; {before:.4g} → {now:.4g})")
        return False


@register_rule
class Overfit(ProjectRule):
    """Fires when validation loss exceeds training loss by more than `ratio_threshold` of it.

    AWS: ratio_threshold (0.1) is "the maximum ratio of the difference between the mean
    validation loss and mean training loss to the mean training loss. If this threshold is
    exceeded for a patience number of steps, the model is being overfit"; patience 1;
    start_step 0. How AWS windows the means is not published. Chosen: judged at the end
    of each validation pass (the first training step after it, or the end of training),
    the mean loss of that pass against the mean loss of the training steps since the
    previous pass; `patience` counts such judgments in a row.
    """

    collections = ("losses",)

    def __init__(self, trial, **parameters):
        super().__init__(trial, **parameters)
        self.train: list[float] = []
        self.valid: list[float] = []
        self.in_a_row = 0

    def invoke_at_step(self, step):
        if step < self.params["start_step"]:
            return False
        mode = self.mode_of(step).name
        fired = False
        if mode == "TRAIN" and self.valid:
            fired = self.judge(step)
        loss = self.loss_at(step)
        if loss is not None and mode in ("TRAIN", "EVAL"):
            (self.train if mode == "TRAIN" else self.valid).append(loss)
        return fired

    def judge(self, step) -> bool:
        if not self.train:
            self.valid = []
            return False
        train, valid = float(np.mean(self.train)), float(np.mean(self.valid))
        self.train, self.valid = [], []
        ratio = (valid - train) / abs(train) if train else float("inf")
        self.in_a_row = self.in_a_row + 1 if ratio > self.params["ratio_threshold"] else 0
        return self.in_a_row >= self.params["patience"] and self.fire(
            step, f"validation loss {valid:.4g} vs training loss {train:.4g}: ratio {ratio:.3g} > "
                  f"{self.params['ratio_threshold']} in {self.in_a_row} validation passes in a row")

    def finish(self, step) -> bool:
        return bool(self.valid) and self.mode_of(step).name == "EVAL" and self.judge(step)


@register_rule
class Overtraining(ProjectRule):
    """Fires when training or validation loss has stopped improving.

    AWS defaults: patience_train 5, patience_validation 10 ("the number of steps to wait
    before the ... loss is considered to not to be improving anymore"), delta 0.01 ("the
    minimum threshold by how much the error should improve before it is considered as a
    new optimum"). AWS counts saved steps, with losses saved every 500 steps by its rule
    configuration; this project saves the loss of every batch, whose noise alone would
    fire the rule. Chosen: the datapoints are passes, the mean loss of each run of
    training steps between validations and of each validation pass (as early stopping
    counts epochs); it fires when `patience_train` training passes, or
    `patience_validation` validation passes, bring no mean below the best by `delta`.
    """

    collections = ("losses",)

    def __init__(self, trial, **parameters):
        super().__init__(trial, **parameters)
        self.best = {"TRAIN": float("inf"), "EVAL": float("inf")}
        self.waited = {"TRAIN": 0, "EVAL": 0}
        self.mode, self.pass_losses = None, []

    def invoke_at_step(self, step):
        mode = self.mode_of(step).name
        fired = mode != self.mode and self.end_pass(step)
        if mode != self.mode:
            self.mode, self.pass_losses = mode, []
        loss = self.loss_at(step)
        if loss is not None:
            self.pass_losses.append(loss)
        return fired

    def end_pass(self, step) -> bool:
        mode, losses = self.mode, self.pass_losses
        self.pass_losses = []
        if mode not in self.best or not losses:
            return False
        mean = float(np.mean(losses))
        if mean < self.best[mode] - self.params["delta"]:
            self.best[mode], self.waited[mode] = mean, 0
            return False
        self.waited[mode] += 1
        patience = self.params["patience_train" if mode == "TRAIN" else "patience_validation"]
        return self.waited[mode] >= patience and self.fire(
            step, f"{'training' if mode == 'TRAIN' else 'validation'} loss has not improved by "
                  f"{self.params['delta']} for {self.waited[mode]} passes (best mean {self.best[mode]:.4g})")

    def finish(self, step) -> bool:
        return self.end_pass(step)


@register_rule
class PoorWeightInitialization(ProjectRule):
    """Fires on badly scaled initial weights, judged in the first `steps` training steps.

    AWS defaults: activation_inputs_regex ".*relu_input", threshold 10.0 ("if the ratio
    between minimum and maximum variance of weights per layer exceeds the threshold at a
    step, the rule returns True"), distribution_range 0.001 ("if the minimum difference
    between 5th and 95th percentiles of the gradient distribution is less than the
    distribution_range, the rule returns True"), patience 5 (steps to wait until the loss
    is considered not decreasing), steps 10 (steps the rule analyses). Here: the variances
    of the activation inputs of each layer (AWS reads ReLU inputs; for in-place ReLUs
    PyTorch's forward hook sees them after the ReLU, a bias toward zero the ratio test
    tolerates); the 5th–95th percentile spread of all gradients; and the loss not
    decreasing over the first `patience` steps, all three at training steps < `steps`.
    """

    def __init__(self, trial, **parameters):
        super().__init__(trial, **parameters)
        self.losses: list[float] = []

    def check_applicable(self) -> None:
        if not self.base_trial.tensor_names(regex=[self.params["activation_inputs_regex"]]):
            raise NotApplicable(f"no tensors match {self.params['activation_inputs_regex']!r}: "
                                f"the hook configuration does not save activation inputs")

    def invoke_at_step(self, step):
        if self.mode_of(step).name != "TRAIN" or self.base_trial.mode_step(step) >= self.params["steps"]:
            return False
        problems = []
        names = self.base_trial.tensor_names(regex=[self.params["activation_inputs_regex"]], step=step)
        variances = [float(v.var()) for v in (self.value(n, step) for n in names) if v is not None and v.size]
        variances = [v for v in variances if v > 0]
        if len(variances) >= 2 and max(variances) / min(variances) > self.params["threshold"]:
            problems.append(f"activation variances span a ratio of {max(variances) / min(variances):.3g} "
                            f"(> {self.params['threshold']}) across {len(variances)} layers")
        gradients = [g.ravel() for g in (self.value(n, step) for n in self._names("gradients", step))
                     if g is not None]
        if gradients:
            low, high = np.percentile(np.concatenate(gradients), [5, 95])
            if high - low < self.params["distribution_range"]:
                problems.append(f"gradients' 5th–95th percentile spread {high - low:.3g} < "
                                f"{self.params['distribution_range']}")
        loss = self.loss_at(step)
        if loss is not None:
            self.losses.append(loss)
            patience = int(self.params["patience"])
            if len(self.losses) > patience and min(self.losses[-patience:]) >= self.losses[-patience - 1]:
                problems.append(f"loss did not decrease in {patience} steps")
        return bool(problems) and self.fire(step, "; ".join(problems))


@register_rule
class DeadRelu(ProjectRule):
    """Fires when more than `threshold_layer` % of a layer's ReLU units are dead.

    AWS defaults: tensor_regex ".*relu_output", threshold_inactivity 1.0 (% activity
    below which a ReLU is dead), threshold_layer 50.0 (% of dead ReLUs in a layer). A unit
    is a channel of a convolutional activation (N, C, H, W) or a feature of a flat one
    (N, F); its activity is the % of its outputs over the batch (and positions) above 0.
    """

    def check_applicable(self) -> None:
        if not self.base_trial.tensor_names(regex=[self.params["tensor_regex"]]):
            raise NotApplicable(f"no tensors match {self.params['tensor_regex']!r}: "
                                f"the hook configuration does not save ReLU outputs")

    def invoke_at_step(self, step):
        dead_layers = []
        for name in self.base_trial.tensor_names(regex=[self.params["tensor_regex"]], step=step):
            value = self.value(name, step)
            if value is None or value.ndim < 2:
                continue
            units = np.moveaxis(value, 1, 0).reshape(value.shape[1], -1)  # (C or F, everything else)
            activity = (units > 0).mean(axis=1) * 100
            dead = (activity < self.params["threshold_inactivity"]).mean() * 100
            if dead > self.params["threshold_layer"]:
                dead_layers.append(f"{name} ({dead:.0f} % dead)")
        return bool(dead_layers) and self.fire(step, f"dead ReLUs: {', '.join(dead_layers[:5])}")


@register_rule
class WeightUpdateRatio(ProjectRule):
    """Fires when a weight update is too large or too small relative to the weight.

    AWS defaults: large_threshold 10.0, small_threshold 1e-8, epsilon 1e-9. The ratio is
    ||w_t - w_prev|| / (||w_prev|| + epsilon) between consecutive saved training steps.
    Chosen: only tensors that train (those with a saved gradient) are judged: a frozen
    backbone's update is 0 by design, not a problem.
    """

    collections = ("weights",)

    def __init__(self, trial, **parameters):
        super().__init__(trial, **parameters)
        self.previous: dict[str, np.ndarray] = {}
        self.trained: set[str] | None = None  # weights with a saved gradient, read at the first step

    def invoke_at_step(self, step):
        if self.mode_of(step).name != "TRAIN":
            return False
        if self.trained is None:
            self.trained = {n.removeprefix("gradient/") for n in self._names("gradients")}
        trained = self.trained
        problems = []
        for name in self._names("weights", step):
            if name not in trained or (weight := self.value(name, step)) is None:
                continue
            if name in self.previous:
                before = self.previous[name]
                ratio = np.linalg.norm(weight - before) / (np.linalg.norm(before) + self.params["epsilon"])
                if ratio > self.params["large_threshold"] or ratio < self.params["small_threshold"]:
                    problems.append(f"{name} ratio {ratio:.3g}")
            self.previous[name] = weight
        return bool(problems) and self.fire(step, f"update/weight ratio outside [{self.params['small_threshold']:g}, "
                                                  f"{self.params['large_threshold']:g}]: {', '.join(problems[:5])}")


@register_rule
class ClassImbalance(ProjectRule):
    """Fires on imbalanced classes or a class mostly mispredicted, once `samples` labels are seen.

    AWS defaults: threshold_imbalance 10 (largest over smallest class count),
    threshold_misprediction 0.7 (fraction of a class's samples mispredicted), samples 500
    (labels to process before judging), argmax False (np.argmax over a probability
    vector; the hook here saves class ids), labels_regex ".*labels", predictions_regex
    ".*predictions". Counts accumulate over the training steps, as AWS describes.
    """

    def check_applicable(self) -> None:
        if not self.base_trial.tensor_names(regex=[self.params["labels_regex"]]):
            raise NotApplicable(f"no tensors match {self.params['labels_regex']!r}: "
                                f"the hook configuration does not save the labels")

    def _one(self, regex: str, step: int) -> np.ndarray | None:
        names = self.base_trial.tensor_names(regex=[regex], step=step)
        value = self.value(names[0], step) if names else None
        if value is not None and self.params["argmax"] and value.ndim > 1:
            value = value.argmax(axis=1)
        return value

    def __init__(self, trial, **parameters):
        super().__init__(trial, **parameters)
        self.counts: dict[int, int] = {}
        self.wrong: dict[int, int] = {}

    def invoke_at_step(self, step):
        if self.mode_of(step).name != "TRAIN":
            return False
        labels = self._one(self.params["labels_regex"], step)
        predictions = self._one(self.params["predictions_regex"], step)
        if labels is None:
            return False
        for i, label in enumerate(labels.astype(int)):
            self.counts[label] = self.counts.get(label, 0) + 1
            if predictions is not None and int(predictions[i]) != label:
                self.wrong[label] = self.wrong.get(label, 0) + 1
        if sum(self.counts.values()) < self.params["samples"]:
            return False
        problems = []
        imbalance = max(self.counts.values()) / min(self.counts.values())
        if imbalance > self.params["threshold_imbalance"]:
            problems.append(f"largest/smallest class count {imbalance:.1f} > {self.params['threshold_imbalance']}")
        if predictions is not None:
            worst = {c: self.wrong.get(c, 0) / n for c, n in self.counts.items()}
            bad = sorted((c for c, f in worst.items() if f > self.params["threshold_misprediction"]),
                         key=lambda c: -worst[c])
            if bad:
                problems.append(f"{len(bad)} class(es) mispredicted more than "
                                f"{self.params['threshold_misprediction']:.0%}: class ids {bad[:10]}")
        return bool(problems) and self.fire(step, "; ".join(problems))


@register_rule
class AllZero(ProjectRule):
    """Fires when at least `threshold` % of a tensor's values are zero.

    AWS defaults: threshold 100 (%), tensors by collection_names/tensor_regex. Chosen
    default collections: weights and gradients (biases start at zero by design).
    """

    def invoke_at_step(self, step):
        names = {n for c in str(self.params["collection_names"]).split(",") if c for n in self._names(c, step)}
        if self.params["tensor_regex"]:
            names |= set(self.base_trial.tensor_names(regex=[self.params["tensor_regex"]], step=step))
        zero = [n for n in sorted(names)
                if (v := self.value(n, step)) is not None and v.size
                and (v == 0).mean() * 100 >= self.params["threshold"]]
        return bool(zero) and self.fire(step, f"{self.params['threshold']:g} % zeros in {len(zero)} tensor(s): "
                                              f"{', '.join(zero[:5])}")


RULE_NAMES: tuple[str, ...] = tuple(_rule_classes)  # every registered rule, in the order they run


class RuleSet:
    """Every rule over one trial, each step evaluated once however often `evaluate` is called."""

    def __init__(self, trial, names: Iterable[str] = RULE_NAMES, parameters: dict[str, dict] | None = None):
        """
        Args:
            trial: an smdebug trial (`smdebug.trials.create_trial(path)`).
            names: the rules to run, by AWS name.
            parameters: per rule, parameters over AWS's defaults.

        Raises:
            ValueError: an unknown rule or parameter.
        """
        unknown = [n for n in names if n not in _rule_classes]
        if unknown:
            raise ValueError(f"unknown rule(s) {', '.join(unknown)}; rules: {', '.join(RULE_NAMES)}")
        self.trial = trial
        self.rules = {n: _rule_classes[n](trial, **(parameters or {}).get(n, {})) for n in names}
        self.results = {n: RuleResult(n, NO_ISSUES, parameters=dict(r.params)) for n, r in self.rules.items()}
        self.next_step = 0

    def evaluate(self) -> dict[str, RuleResult]:
        """Run every rule on the steps saved since the last call (call it at the end of each epoch)."""
        steps = [s for s in self.trial.steps() if s >= self.next_step]
        last = steps[-1] if steps else self.next_step - 1
        for name, rule in self.rules.items():
            result = self.results[name]
            if result.status in (ERROR, NOT_APPLICABLE):
                continue
            try:
                rule.check_applicable()
                for step in steps:
                    self._invoke(rule, result, step)
                if rule.finish(last):  # judge what the last steps left pending (a validation pass)
                    self._record(rule, result, last)
            except NotApplicable as exc:
                result.status, result.details = NOT_APPLICABLE, [str(exc)]
            except Exception as exc:  # one broken rule must not stop the others, nor the job
                logger.warning("rule %s failed: %s", name, exc, exc_info=True)
                result.status, result.details = ERROR, [f"{type(exc).__name__}: {exc}"]
        self.next_step = last + 1
        return self.results

    def _invoke(self, rule, result: RuleResult, step: int) -> None:
        try:
            rule.invoke(step)
        except RuleEvaluationConditionMet:
            self._record(rule, result, step)
        except (StepUnavailable, TensorUnavailable, TensorUnavailableForStep):
            return
        result.datapoints += 1

    @staticmethod
    def _record(rule, result: RuleResult, step: int) -> None:
        result.violations += 1
        result.status = ISSUES
        result.step = step if result.step is None else result.step
        result.details = rule.messages[:20]
