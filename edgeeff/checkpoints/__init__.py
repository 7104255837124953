"""Checkpoint import: formats people train in, mapped onto edgeeff's model."""

from edgeeff.checkpoints.load import (CheckpointError, LoadedModel, load_checkpoint, save_checkpoint,
                                      untrained_model, with_export_resolution)

__all__ = ["CheckpointError", "LoadedModel", "load_checkpoint", "save_checkpoint", "untrained_model",
           "with_export_resolution"]
