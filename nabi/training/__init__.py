"""Training: the configuration, optimisers and schedules, the trainer, checkpoints, mixed precision, and
``build_trainer``, the one place a trainer is put together from a configuration."""
