"""Fitted models from measurements (issue #11): length models (:func:`fit_lengths`) and batch-time models
(:func:`fit_batch`), both fitted with optax. See docs/model.md for the quantities they match."""

from .lengths import LengthFit, fit_lengths
from .model import LengthModel, is_length_model, load_length_model

__all__ = ["LengthFit", "LengthModel", "fit_lengths", "is_length_model", "load_length_model"]
