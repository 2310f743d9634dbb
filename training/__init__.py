"""Training of the teacher (cross-entropy) and the student (CE + distillation): one hand-written loop.

Modules: ``trainer`` (the loop, the accumulation window, data order, DDP under torchrun),
``validation`` (validation loss and generation metrics, best-model tracking), ``checkpointing``
(save, load and resume, the final export).
"""
from training.checkpointing import TrainState
from training.trainer import Trainer, TrainJob

__all__ = ["Trainer", "TrainJob", "TrainState"]
