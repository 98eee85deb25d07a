"""score_sde: score-based generative modeling with SDEs in JAX."""

from score_sde import analytic, bpd, guidance, likelihood, solvers
from score_sde import edit, inverse  # after solvers: they build on them
from score_sde.analytic import GaussianMixture
from score_sde.cld import CLD
from score_sde.models.parameterization import ScoreModel
from score_sde.sde import (
    SDE,
    ForwardSDE,
    VESDE,
    VPSDE,
    SubVPSDE,
    default_eps,
    probability_flow_drift,
    reverse_drift,
)

__all__ = [
    "SDE",
    "CLD",
    "ScoreModel",
    "ForwardSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "GaussianMixture",
    "analytic",
    "bpd",
    "edit",
    "guidance",
    "inverse",
    "likelihood",
    "solvers",
    "default_eps",
    "probability_flow_drift",
    "reverse_drift",
]
__version__ = "0.1.0"
