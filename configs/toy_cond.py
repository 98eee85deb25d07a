# Conditional 2-D toy (the oracle of conditional training): the toy_gmm mixture of toy_vp.py with one
# `vector` condition part y = x[0] + 0.5 e, e ~ N(0, 1), generated with the data (train / test splits).
# The exact posterior p(x | y) is `GaussianMixture.posterior(A, y, 0.5)` (score_sde.analytic).
#   python main.py --config=configs/toy_cond.py --workdir=runs/toy_cond --mode=train
#   python main.py --config=configs/toy_cond.py --workdir=runs/toy_cond --mode=sample --config.sampling.method=ode
#       (conditions: the first num_samples of the test split, saved as cond_y in the .npz;
#        --config.sampling.condition=null samples the marginal)
import ml_collections

from configs import toy_vp


def get_config():
    config = toy_vp.get_config()
    config.data.dataset = "toy_cond"
    config.data.cond.y = ml_collections.ConfigDict({"kind": "vector", "size": 1, "dropout": 0.1})
    config.sampling.method = "ode"
    return config
