"""Fitted models from measurements, both fitted with optax: length models (:func:`fit_lengths`, a
constrained log-normal mixture that is an lqs Workload) and the affine batch-time model (:func:`fit_batch`).
See docs/model.md for the quantities they match."""

from .batch import BatchFit, fit_batch
from .lengths import LengthFit, fit_lengths
from .model import LengthModel, is_length_model, load_length_model

__all__ = ["BatchFit", "LengthFit", "LengthModel", "fit_batch", "fit_lengths", "is_length_model",
           "load_length_model"]
