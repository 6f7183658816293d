"""The training job: hyperparameters, channels, the loop, checkpoints."""


class TrainingInterrupted(Exception):
    """SIGTERM arrived: a checkpoint was saved and the job stopped (a restart resumes)."""
