"""Flax score networks and the parameterisation that turns their output into a score."""

from score_sde.models.mlp import MLP
from score_sde.models.parameterization import ModelScore, model_score, noise_conditioning, score_fn

__all__ = ["MLP", "ModelScore", "model_score", "noise_conditioning", "score_fn"]
