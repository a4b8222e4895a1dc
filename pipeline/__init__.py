"""clphase: where contrastive learning on imbalanced classes keeps classes apart."""

__version__ = "0.1.0"
