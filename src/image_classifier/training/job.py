"""One SageMaker training job: channels in, best-on-validation model artifacts and metrics out.

`run` reads top to bottom: the set-up (device, model and loaders, loss, optimizer, schedule,
resume), the epoch loop (train one epoch → evaluate → checkpoint → log), and the end of the
job (test the best weights, save them, metrics.json, the report). Below it: the helpers of the
set-up and loop, then the fine-tuning recipe (stages, parameter groups, learning-rate factors,
class weights, the loss).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from image_classifier import artifacts, models
from image_classifier.debugging.debugger import Debugger
from image_classifier.profiling.profiler import Profiler
from image_classifier.profiling.steps import NO_TIMER, NoTimer
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training import data, distributed, evaluation, export, metrics
from image_classifier.training.checkpoints import Checkpointer, JobState
from image_classifier.training.config import TrainConfig
from image_classifier.training.failure import TrainingInterrupted
from image_classifier.training.loaders import (
    find_channels,
    make_feature_loaders,
    make_loaders,
    num_workers,
)
from image_classifier.training.loop import Meter, train_one_epoch
from image_classifier.transforms import resize_size

logger = logging.getLogger(__name__)

PRETRAINED_CHANNEL = "pretrained"


def run(env: SageMakerEnv, config: TrainConfig, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Run the training job described by `env` and `config`.

    Returns:
        the final metrics: the best epoch's `best_epoch`, `valid_loss`, `valid_accuracy` and
        `valid_f1`, then `test_loss`/`test_accuracy`/`test_f1` when there is a test channel.

    Raises:
        FileNotFoundError, ValueError: see `loaders.find_channels` and `loaders.make_loaders`.
        models.PretrainedWeightsUnavailable: pretrained=true and no weights to be had.
        TrainingInterrupted: `should_stop()` turned true; a checkpoint was saved first.
        debugging.hook.DebugUnavailable: debugging asked for and smdebug cannot provide it.
    """
    _seed_everything(config.seed)
    distributed.check_config(config)  # ddp
    device, amp_dtype = _device_and_amp(config)
    logger.info("training on %s%s with %s", device, f" ({amp_dtype})" if amp_dtype else "", config.to_dict())
    with _watchers(env, config, device) as (debugger, timer):
        hook = debugger.hook if debugger else None
        class_names, model, trainable, loaders = _model_and_data(env, config, device, amp_dtype)
        train_loader, valid_loader = loaders[data.TRAIN], loaders[data.VALID]

        # loss, optimizer, schedule (stepped every step), and where a restarted job left off
        criterion = _criterion(config, train_loader.dataset.targets, len(class_names), device)
        eval_criterion = nn.CrossEntropyLoss()
        optimizer = _make_optimizer(config, param_groups(model, config))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factors(config, len(train_loader)))
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        checkpointer = Checkpointer(env.checkpoint_dir, {"config": config.to_dict(), "classes": class_names},
                                    model, optimizer, scheduler, scaler)
        state = checkpointer.restore()
        if hook:
            _register_hook(hook, model, trainable, criterion, eval_criterion, config)
        stages = _Stages(model, trainable, config)

        while state.epoch < config.epochs:
            epoch = state.epoch + 1
            # train one epoch (part of one, when a restarted job resumes mid-epoch)
            train_loader.sampler.set_epoch(epoch, state.step * train_loader.batch_size)
            train = train_one_epoch(stages.module(epoch), train_loader, criterion, optimizer, device, scaler,
                                    amp_dtype, Meter(**distributed.local_meter(state.meter)), should_stop, hook,
                                    timer, scheduler=scheduler)
            train = distributed.settle_epoch(model, train)  # ddp: the job's figures, rank 0's buffers
            if should_stop():
                raise _save_and_stop(checkpointer, state, epoch, train)

            # evaluate on the valid channel, keep the best weights, checkpoint, log
            valid = evaluation.validate(trainable, valid_loader, eval_criterion, device, amp_dtype, hook, timer)
            line = metrics.epoch_line(epoch, train, valid)
            state.end_epoch(line, model)
            checkpointer.save(state)
            logger.info(metrics.format_metrics(line))  # ddp: ranks other than 0 log warnings only
            metrics.write_metrics(env.output_data_dir, state)
            if _stop_early(config, state, debugger, epoch):
                break

        # the best weights are the model: test them, then write the artifacts
        model.load_state_dict(state.best_state)
        distributed.check_in_sync(model)  # ddp
        channel, predictions, test = evaluation.final_pass(trainable, loaders, eval_criterion, device, amp_dtype,
                                                           hook)
        if test is not None:
            logger.info(metrics.format_metrics(test))
        spec = model_spec(config, class_names)
        exported = _save_model(env, config, spec, state.best_state)
        metrics.write_metrics(env.output_data_dir, state, test)
        evaluation.write_report(env, spec, channel, loaders[channel], predictions, state.best_state, device,
                                exported)
        return metrics.final(state, test)


# --- the set-up and the loop's steps ----------------------------------------------------------

def _seed_everything(seed: int) -> None:
    """Seed Python's and torch's random generators (the data order and augmentations have their own seeds)."""
    random.seed(seed)
    torch.manual_seed(seed)


def _device_and_amp(config: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    """The device (this rank's GPU, else the CPU) and the autocast dtype: bfloat16 where supported, else
    float16, on a GPU with `amp`; None (float32) otherwise."""
    if not torch.cuda.is_available():
        return torch.device("cpu"), None
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if config.amp else None
    return distributed.device(), amp  # ddp: cuda:LOCAL_RANK


@contextlib.contextmanager
def _watchers(env: SageMakerEnv, config: TrainConfig,
              device: torch.device) -> Iterator[tuple[Debugger | None, NoTimer]]:
    """The debugger (or None) and the profiler's step timer (or NO_TIMER), as far as asked for.

    Both are created first, so that they fail here, not mid-job; on the way out they close and
    evaluate their rules, except after SIGTERM (SageMaker kills the job soon after it).
    """
    debugger = Debugger.create(env, config.debug or bool(config.stop_on_rules), config.stop_on_rules)
    profiler = Profiler.create(env, config.profile, device, num_workers(config))
    evaluate_rules = True
    try:
        if profiler:
            profiler.start()
        yield debugger, profiler.timer if profiler else NO_TIMER
    except TrainingInterrupted:
        evaluate_rules = False
        raise
    finally:
        if profiler:
            profiler.close(evaluate_rules)
        if debugger:
            debugger.close(evaluate_rules, metrics.read_epochs(env.output_data_dir))


def _model_and_data(env: SageMakerEnv, config: TrainConfig, device: torch.device,
                    amp_dtype: torch.dtype | None) -> tuple[list[str], nn.Module, nn.Module, dict[str, DataLoader]]:
    """The class names, the model, what trains, and the loaders.

    What trains is the whole model on images, or only its head on cached backbone features
    (`feature-cache`); the head shares its parameters with the model, which is what the job
    checkpoints and saves either way.
    """
    channels, class_names = find_channels(env)
    model = build_model(config, len(class_names), env).to(device)
    if config.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # NHWC: tensor-core convolutions, no transposes
    if config.uses_feature_cache:
        loaders = make_feature_loaders(env, config, channels, class_names, model, device, amp_dtype)
        return class_names, model, models.head_module(model, config.model), loaders
    return class_names, model, model, make_loaders(config, channels, class_names, pin_memory=device.type == "cuda")


def _register_hook(hook, model: nn.Module, trainable: nn.Module, criterion: nn.Module,
                   eval_criterion: nn.Module, config: TrainConfig) -> None:
    """Let the smdebug hook watch `trainable` and the two losses."""
    if config.freeze == "none":  # smdebug hooks the gradients of the parameters that require one now
        model.requires_grad_(True)  # (each epoch's set_stage freezes the backbone again where it should)
    hook.register(trainable, criterion, eval_criterion)


class _Stages:
    """The module that runs each epoch's training steps: `trainable` set to the epoch's stage
    (`set_stage`) and wrapped for it (`_train_module`), wrapped again only when the stage changes."""

    def __init__(self, model: nn.Module, trainable: nn.Module, config: TrainConfig):
        self.model, self.trainable, self.config = model, trainable, config
        self.frozen: bool | None = None
        self.train_module: nn.Module | None = None

    def module(self, epoch: int) -> nn.Module:
        frozen = set_stage(self.model, self.config, epoch)
        if self.train_module is None or frozen != self.frozen:  # the first epoch, or a new stage
            self.frozen = frozen
            if self.config.freeze == "none":
                logger.info("epoch %d: %s", epoch, "the head alone trains (head-epochs)" if frozen else
                            "the whole network trains")
            self.train_module = _train_module(self.trainable, self.config)
        return self.train_module


def _save_and_stop(checkpointer: Checkpointer, state: JobState, epoch: int, train: Meter) -> TrainingInterrupted:
    """Checkpoint the epoch in progress (`train.steps` done) and return the exception that stops the job."""
    state.step, state.meter = train.steps, train.state_dict()
    checkpointer.save(state)
    return TrainingInterrupted(f"stopped by SIGTERM in epoch {epoch} after step {train.steps}; "
                               f"checkpoint saved to {checkpointer.path}, a restarted job resumes from it")


def _stop_early(config: TrainConfig, state: JobState, debugger: Debugger | None, epoch: int) -> bool:
    """Whether the job ends after `epoch`: early stopping (`early-stopping-patience`), or a rule of `debug-stop-on`."""
    if config.early_stopping_patience and state.epochs_without_improvement >= config.early_stopping_patience:
        logger.info("early stopping: no better valid_accuracy for %d epochs", state.epochs_without_improvement)
        return True
    if debugger and (fired := debugger.end_epoch(epoch)):
        logger.info("stopping training after epoch %d: rule(s) %s fired (debug-stop-on)", epoch, ", ".join(fired))
        return True
    return False


def model_spec(config: TrainConfig, class_names: list[str]) -> artifacts.ModelSpec:
    """What serving needs to rebuild the model: its head, and the normalisation of its pretrained weights."""
    norm = models.data_config(config.model)
    return artifacts.ModelSpec(
        arch=config.model, num_classes=len(class_names), class_names=class_names,
        labels=[artifacts.label_of(c) for c in class_names], image_size=config.image_size,
        resize_size=resize_size(config.image_size), mean=list(norm.mean), std=list(norm.std),
        dropout=config.dropout, head_hidden=list(config.hidden_sizes), head_activation=config.head_activation)


def _save_model(env: SageMakerEnv, config: TrainConfig, spec: artifacts.ModelSpec, state_dict: dict) -> Path | None:
    """The model artifacts (`artifacts.save_model`) in the model dir, then with export=openvino the
    serving runtime's files (`export.export_for_job`); rank 0 only: one writer under DDP.

    Returns:
        the folder of the exported files; None without them (export=none, a failed export, rank > 0).
    """
    if not distributed.is_main():  # ddp: one writer
        return None
    artifacts.save_model(env.model_dir, state_dict, spec)
    logger.info("model artifacts written to %s", env.model_dir)
    if config.export != "openvino":
        return None
    return export.export_for_job(env.model_dir, data.resolve_channels(env.channel_dir)[data.TRAIN], spec, state_dict)


def _train_module(trainable: nn.Module, config: TrainConfig) -> nn.Module:
    """What runs the training steps: DDP over `trainable` under torchrun (over the parameters that
    train in this stage), compiled if asked; wrappers that share its parameters, so the model keeps
    its state_dict keys."""
    train_module = distributed.wrap(trainable)
    if config.compile:
        logger.info("compiling the trained module with torch.compile (the first steps take longer)")
        train_module = torch.compile(train_module)
    return train_module


# --- the fine-tuning recipe ----------------------------------------------------------------------

def build_model(config: TrainConfig, num_classes: int, env: SageMakerEnv) -> nn.Module:
    """The registry model with its new head; ImageNet weights when `pretrained`; the backbone frozen
    when it is in the first epoch (`set_stage`)."""
    state_dict = None
    if config.pretrained:
        state_dict = models.load_pretrained_state_dict(config.model, env.channel_dir(PRETRAINED_CHANNEL))
    elif config.freeze == "backbone":
        logger.warning("freeze=backbone with pretrained=false trains a head on random features")
    model = models.create_model(config.model, num_classes, config.dropout, state_dict,
                                head_hidden=config.hidden_sizes, head_activation=config.head_activation)
    set_stage(model, config, epoch=1)
    return model


def set_stage(model: nn.Module, config: TrainConfig, epoch: int) -> bool:
    """Train mode for `epoch` (1-based); returns whether the backbone is frozen in it.

    A frozen backbone (freeze=backbone, or the first `head-epochs` of freeze=none) has no
    gradients and stays in eval mode: its BatchNorm layers normalise with, and keep, the
    pretrained running statistics, while the head trains.
    """
    frozen = config.backbone_frozen(epoch)
    model.requires_grad_(not frozen)
    model.train(not frozen)
    head = models.head_module(model, config.model)
    head.requires_grad_(True)
    head.train()
    return frozen


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups: the head at `lr`; with freeze=none the backbone at
    `lr x backbone-lr-scale` (discriminative learning rates, Howard and Ruder 2018, arXiv:1801.06146)."""
    head = list(models.head_module(model, config.model).parameters())
    groups = [{"params": head, "lr": config.lr}]
    if config.freeze == "none":
        in_head = {id(p) for p in head}
        groups.append({"params": [p for p in model.parameters() if id(p) not in in_head],
                       "lr": config.lr * config.backbone_lr_scale})
    return groups


def _make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factors(config: TrainConfig, steps_per_epoch: int) -> list[Callable[[int], float]]:
    """Per parameter group (`param_groups`' order), the factor of its learning rate at each step.

    Cosine annealing over the job's steps (`lr-scheduler=cosine`; Loshchilov and Hutter 2017,
    arXiv:1608.03983, without restarts), times a linear warm-up over `warmup-epochs` from the
    step the group starts training: the head at once, the backbone after `head-epochs`.
    """
    total = max(1, config.epochs * steps_per_epoch)
    warmup = config.warmup_epochs * steps_per_epoch

    def factor(first_epoch: int) -> Callable[[int], float]:
        start = first_epoch * steps_per_epoch

        def at(step: int) -> float:
            warm = min(1.0, (step - start + 1) / warmup) if warmup else 1.0
            cosine = 0.5 * (1 + math.cos(math.pi * step / total)) if config.lr_scheduler == "cosine" else 1.0
            return max(0.0, warm) * cosine
        return at

    factors = [factor(0)]
    if config.freeze == "none":
        factors.append(factor(min(config.head_epochs, config.epochs)))
    return factors


def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """scikit-learn's `class_weight="balanced"`: n / (classes x count) per class, float32 (classes,);
    0 for a class without training images."""
    counts = torch.bincount(targets.long(), minlength=num_classes).float()
    return torch.where(counts > 0, targets.numel() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))


def _criterion(config: TrainConfig, targets, num_classes: int, device: torch.device) -> nn.Module:
    """The training loss: cross-entropy with label smoothing, weighted per class when `class-weighting=balanced`
    (`targets`: the train channel's class ids, a list or tensor)."""
    weight = None
    if config.class_weighting == "balanced":
        weight = class_weights(torch.as_tensor(targets), num_classes).to(device)
        logger.info("class-weighting=balanced: loss weights from %.3g to %.3g", weight.min(), weight.max())
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
