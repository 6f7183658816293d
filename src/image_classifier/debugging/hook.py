"""The smdebug hook of a training job: from SageMaker's `debughookconfig.json`, or the common configuration.

SageMaker writes `/opt/ml/input/config/debughookconfig.json` when a training job is created
with a `DebugHookConfig`; its keys are the API's (`LocalPath`, `HookParameters`,
`CollectionConfigurations`), which is what `smdebug.pytorch.Hook.create_from_json_file`
reads. Without that file, `debug=true` gives the hook `hook_config()`, the configuration such
projects use (and `scripts/train_debug.py` sends): one definition for both.

Without the SageMaker Debugger service nobody uploads `LocalPath`, so `DebugHook.close`
copies the tensors under `output/data/debug/tensors`, which SageMaker uploads in
`output.tar.gz`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from image_classifier.sagemaker_env import SageMakerEnv

logger = logging.getLogger(__name__)

HOOK_CONFIG_FILE = "debughookconfig.json"  # in input/config, as SageMaker writes it
DEBUG_OUTPUT_DIR = "debug"                 # under output/data: tensors, rule results, reports
TENSORS_DIR = "tensors"                    # smdebug's default LocalPath is /opt/ml/output/tensors

TRAIN_SAVE_INTERVAL = 5   # weights, gradients, biases: every 5 training steps...
EVAL_SAVE_INTERVAL = 1    # ...and every evaluation step
# relu_input/relu_output are whole activation maps (about 1.5 GB a step for resnet50 at 224 px,
# batch 32): saved at the interval of AWS's own rule configurations (smdebug_rulesconfig
# collections.json, "save_interval": "500"), which includes step 0.
ACTIVATION_SAVE_INTERVAL = 500
LABELS = "labels"            # (N,) int64 targets of a step, for ClassImbalance
PREDICTIONS = "predictions"  # (N,) int64 top-1 classes of a step


class DebugUnavailable(RuntimeError):
    """Debugging was asked for but smdebug cannot be imported or cannot make the hook."""


def hook_config(local_path: str | Path, s3_output_path: str | None = None) -> dict[str, Any]:
    """The common hook configuration in the shape of SageMaker's `DebugHookConfig`.

    The same dict is a valid `debughookconfig.json`. Collections: `weights`, `gradients` and
    `biases` every TRAIN_SAVE_INTERVAL training steps and every evaluation step; `losses`,
    `labels` and `predictions` every step; `relu_input` and `relu_output` every
    ACTIVATION_SAVE_INTERVAL steps (the DeadRelu and PoorWeightInitialization rules read them).

    Args:
        local_path: where the hook writes in the container (SageMaker: /opt/ml/output/tensors).
        s3_output_path: the API's `S3OutputPath`, omitted when None.
    """
    every = {"train.save_interval": str(TRAIN_SAVE_INTERVAL), "eval.save_interval": str(EVAL_SAVE_INTERVAL)}
    every_step = {"save_interval": "1"}
    activations = {"save_interval": str(ACTIVATION_SAVE_INTERVAL)}
    collections = {
        "weights": every, "gradients": every, "biases": every, "losses": every_step,
        LABELS: {"include_regex": f"^{LABELS}$", **every_step},
        PREDICTIONS: {"include_regex": f"^{PREDICTIONS}$", **every_step},
        "relu_input": {"include_regex": ".*relu_input", **activations},
        "relu_output": {"include_regex": ".*relu_output", **activations},
    }
    config: dict[str, Any] = {
        "LocalPath": str(local_path),
        "HookParameters": dict(every),
        "CollectionConfigurations": [{"CollectionName": name, "CollectionParameters": params}
                                     for name, params in collections.items()],
    }
    if s3_output_path:
        config["S3OutputPath"] = s3_output_path
    return config


def _hook_class():
    """smdebug's PyTorch Hook, made right for mixed precision.

    - smdebug 1.0.34 converts tensors with `.numpy()`, which NumPy cannot do for bfloat16:
      under autocast every activation is bfloat16 and the hook raises. They are saved as float32.
    - With float16 and a GradScaler the backward pass carries gradients multiplied by the
      scale (2**16 at first): they are saved divided by it, as the optimizer sees them.
    """
    from smdebug.pytorch import Hook

    class MixedPrecisionHook(Hook):
        grad_scale = 1.0  # set by DebugHook.set_grad_scale before each backward pass

        @staticmethod
        def _make_numpy_array(tensor_value):
            if isinstance(tensor_value, torch.Tensor) and tensor_value.dtype == torch.bfloat16:
                tensor_value = tensor_value.float()
            return Hook._make_numpy_array(tensor_value)

        def backward_hook(self, tname):
            save = super().backward_hook(tname)

            def back(grad):
                save(grad if self.grad_scale == 1.0 else grad / self.grad_scale)

            return back

    return MixedPrecisionHook


class DebugHook:
    """The smdebug hook of one model and its losses, with what the training loop asks of it."""

    def __init__(self, hook, out_dir: Path, env: SageMakerEnv):
        from smdebug import modes

        self.hook, self.out_dir, self.env, self._modes = hook, out_dir, env, modes
        # a configuration without these collections (SageMaker's file) gets no labels/predictions
        self._records = [n for n in (LABELS, PREDICTIONS) if n in (hook.include_collections or ())]

    @classmethod
    def create(cls, env: SageMakerEnv, debug: bool) -> DebugHook | None:
        """The hook the job asks for, or None (then debugging costs nothing).

        SageMaker's `debughookconfig.json` wins; else `debug` gives `hook_config()` writing to
        `<base>/output/tensors`. The configuration used is kept in `output/data/debug/`.

        Raises:
            DebugUnavailable: asked for, and smdebug is missing or rejects the configuration.
        """
        sagemaker_file = env.config_dir / HOOK_CONFIG_FILE
        if not sagemaker_file.is_file() and not debug:
            return None
        record = env.output_data_dir / DEBUG_OUTPUT_DIR / HOOK_CONFIG_FILE
        record.parent.mkdir(parents=True, exist_ok=True)
        if sagemaker_file.is_file():
            source = "SageMaker's " + str(sagemaker_file)
            shutil.copyfile(sagemaker_file, record)
        else:
            source = "the common configuration (debug=true)"
            record.write_text(json.dumps(hook_config(env.output_dir / TENSORS_DIR), indent=2))
        try:
            out_dir = Path(json.loads(record.read_text())["LocalPath"])
            hook = _hook_class().create_from_json_file(str(record))
        except ImportError as exc:
            raise DebugUnavailable(f"debugging was asked for but smdebug cannot be imported: {exc}") from exc
        except Exception as exc:  # smdebug raises plain exceptions of several kinds on a bad file
            raise DebugUnavailable(f"smdebug cannot make a hook from {source}: {type(exc).__name__}: {exc}") from exc
        logger.info("debugging: smdebug hook from %s, tensors in %s", source, out_dir)
        return cls(hook, out_dir, env)

    def register(self, model: nn.Module, *losses: nn.Module) -> None:
        """Hook the model (weights, gradients, activations) and each loss module."""
        self.hook.register_module(model)
        for loss in losses:
            self.hook.register_loss(loss)

    def set_mode(self, mode: str) -> None:
        """smdebug's mode, "train", "eval" (validation) or "predict" (the test channel).

        Save intervals and step counters are per mode; the rules compare "train" with "eval".
        """
        self.hook.set_mode({"train": self._modes.TRAIN, "eval": self._modes.EVAL,
                            "predict": self._modes.PREDICT}[mode])

    def set_grad_scale(self, scaler: torch.amp.GradScaler) -> None:
        """Tell the hook the GradScaler's scale of the coming backward pass (1 when disabled)."""
        self.hook.grad_scale = float(scaler.get_scale()) if scaler.is_enabled() else 1.0

    def record_batch(self, targets: torch.Tensor, logits: torch.Tensor) -> None:
        """Save the step's labels (N,) and top-1 predictions (N,), both int64.

        Call between the model's forward and the loss: the loss's forward hook writes them
        in the same step. Only those of the two collections the configuration names are saved.
        """
        if LABELS in self._records:
            self.hook.save_tensor(LABELS, targets.detach(), LABELS)
        if PREDICTIONS in self._records:
            self.hook.save_tensor(PREDICTIONS, logits.detach().argmax(dim=1), PREDICTIONS)

    def flush(self) -> None:
        """Write out the step in progress, so a trial sees every step saved so far."""
        self.hook._close_writers()  # smdebug closes a step's files only when the next step starts

    def close(self) -> None:
        """Close the hook and copy its tensors into `output/data/debug/tensors` (output.tar.gz)."""
        self.hook.close()
        target = self.env.output_data_dir / DEBUG_OUTPUT_DIR / TENSORS_DIR
        if self.out_dir.is_dir() and self.out_dir.resolve() != target.resolve():
            shutil.copytree(self.out_dir, target, dirs_exist_ok=True, copy_function=_link_or_copy)


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where both are on one file system (no second copy on disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
