"""Training: the Fabric loop, frozen-encoder embedding cache, and the run folder."""

from clinfuse.training.run import resolve_modalities, train_run
from clinfuse.training.trainer import fit_network, resolve_device

__all__ = ["fit_network", "resolve_device", "resolve_modalities", "train_run"]
