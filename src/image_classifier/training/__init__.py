"""The training job, one module a job, read in this order.

`job` (`run`: set-up, then the epoch loop) composes `loop` (one epoch of training, one pass of
evaluation), `loaders` (channels → DataLoaders, over `data` images or `features` cached
backbone features), `checkpoints` (resume state), `metrics` (metrics.json and the metric log
lines), `evaluation` (the end-of-job test pass and report) and `distributed` (torchrun, DDP);
`config` holds the hyperparameters and `failure` the exit codes and the failure file.
"""
