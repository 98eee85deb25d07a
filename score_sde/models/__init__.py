"""Flax score networks and the parameterisation that turns their output into a score.

Networks: `MLP` (low-dimensional data), `UNet` (tiny images), `NCSNpp` (NCSN++ and, with
DDPM++ settings, DDPM++). `get_model(config.model)` builds one by name.
"""

from score_sde.models.ddpmpp import DDPMPP_SETTINGS, NCSNPP_SETTINGS, ddpmpp, ncsnpp
from score_sde.models.mlp import MLP
from score_sde.models.ncsnpp import NCSNpp
from score_sde.models import conditions
from score_sde.models.conditions import KINDS, Part
from score_sde.models.parameterization import (BoundScore, ScoreModel, cond_score_fn, model_score, network_input_shape,
                                               noise_conditioning, score_fn)
from score_sde.models.registry import MODELS, PRECISIONS, get_model, names, with_precision
from score_sde.models.unet import UNet

__all__ = [
    "MLP", "UNet", "NCSNpp", "ddpmpp", "ncsnpp", "DDPMPP_SETTINGS", "NCSNPP_SETTINGS",
    "MODELS", "PRECISIONS", "get_model", "names", "with_precision",
    "ScoreModel", "BoundScore", "model_score", "network_input_shape", "noise_conditioning", "score_fn",
    "cond_score_fn", "conditions", "KINDS", "Part",
]
