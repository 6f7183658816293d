"""The training job, one concern a module, in reading order.

`job.run` (the set-up, then the epoch loop) composes `loop` (one epoch of training, one pass
of evaluation), `loaders` (channels as DataLoaders, of `data` images or `features` cached
backbone features), `checkpoints` (the resume state), `metrics` (metrics.json and the metric
log lines), `evaluation` (the validation figures, the end-of-job test pass and report) and
`distributed` (torchrun, DDP). `config` holds the hyperparameters; `failure` the exit codes
and the failure file.
"""
