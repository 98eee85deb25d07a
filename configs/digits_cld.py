# Embedded digits (8x8, 17 grey levels) with critically-damped Langevin diffusion (Dockhorn et al. 2022):
# the digits_vp.py network and training budget, the paper's CLD (beta = 4, M^-1 = 4, gamma = 0.04),
# hybrid score matching, SSCS sampling and the ELBO over v0 in bits/dim.
#   python main.py --config=configs/digits_cld.py --workdir=runs/digits_cld --mode=train
#   python main.py --config=configs/digits_cld.py --workdir=runs/digits_cld --mode=sample
#   python main.py --config=configs/digits_cld.py --workdir=runs/digits_cld --mode=likelihood
from configs import digits_vp


def cld_sde(config):
    """The paper's CLD settings; the network sees (x, v) (2x channels) and predicts the velocity score."""
    sde = config.sde
    sde.name = "cld"
    sde.beta = 4.0
    sde.m_inv = 4.0
    sde.gamma = 0.04
    config.training.continuous = True
    config.training.likelihood_weighting = False  # l_t^-2 weighting: the noise-prediction objective
    config.sampling.method = "sscs"
    config.sampling.sscs.n_steps = 100
    config.sampling.euler_maruyama.denoise = False  # CLD has no Tweedie step
    config.sampling.ode.denoise = False


def get_config():
    config = digits_vp.get_config()
    cld_sde(config)
    return config
