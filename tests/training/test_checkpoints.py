"""Checkpoints: the whole job state round-trips, another job's checkpoint is not resumed, the best epoch is kept."""

from __future__ import annotations

import torch
from torch import nn

from image_classifier.training.checkpoints import CHECKPOINT_FILE, Checkpointer, JobState


def _objects(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
                                  torch.amp.GradScaler]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False)


def test_a_checkpoint_restores_the_job_where_it_stopped(tmp_path):
    identity = {"config": {"lr": 0.1}, "classes": ["a", "b", "c"]}
    saved = _objects(0)
    state = JobState(epoch=2, step=5, meter={"count": 10}, best_epoch=2)
    Checkpointer(tmp_path, identity, *saved).save(state)
    assert (tmp_path / CHECKPOINT_FILE).is_file()

    restored = _objects(1)
    assert Checkpointer(tmp_path, identity, *restored).restore() == state
    for a, b in zip(saved[0].state_dict().values(), restored[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert restored[1].state_dict()["state"].keys() == saved[1].state_dict()["state"].keys()
    assert restored[2].get_last_lr() == saved[2].get_last_lr()


def test_another_jobs_checkpoint_is_not_resumed(tmp_path, caplog):
    Checkpointer(tmp_path, {"config": {"lr": 0.1}, "classes": ["a"]}, *_objects(0)).save(JobState(epoch=3))
    assert Checkpointer(tmp_path, {"config": {"lr": 0.2}, "classes": ["a"]}, *_objects(0)).restore() == JobState()
    assert "starting afresh" in caplog.text
    assert Checkpointer(tmp_path / "none", {}, *_objects(0)).restore() == JobState()


def test_the_best_epoch_is_the_most_accurate_then_the_lowest_loss():
    model, state = nn.Linear(2, 2), JobState()
    for epoch, accuracy, loss in [(1, 0.5, 1.0), (2, 0.7, 0.9), (3, 0.7, 0.8), (4, 0.6, 0.1)]:
        state.end_epoch({"epoch": epoch, "valid_accuracy": accuracy, "valid_loss": loss}, model)
    assert (state.best_epoch, state.best_accuracy, state.best_loss) == (3, 0.7, 0.8)
    assert (state.epoch, state.step, state.epochs_without_improvement, len(state.history)) == (4, 0, 1, 4)
    assert state.best_state.keys() == model.state_dict().keys()
