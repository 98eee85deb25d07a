# 2-D toy data (a mixture of 8 Gaussians on a circle, generated in code), VP SDE, small MLP.
#   python main.py --config=configs/toy_vp.py --workdir=runs/toy --mode=train
#   python main.py --config=configs/toy_vp.py --workdir=runs/toy --mode=sample --config.sampling.method=ode
from configs import default


def get_config():
    config = default.get_default_configs()
    config.data.dataset = "toy_gmm"      # or checkerboard | moons | swiss_roll
    config.data.num_levels = 0           # continuous data: no grey levels, no dequantisation
    config.model.name = "mlp"
    config.model.hidden = (128, 128, 128)
    config.model.ema_rate = 0.99
    config.sde.name = "vpsde"
    config.training.batch_size = 256
    config.training.n_iters = 3000
    config.training.snapshot_freq = 1000
    config.training.log_freq = 100
    config.training.steps_per_call = 10
    config.optim.lr = 2e-3
    config.optim.warmup = 100
    config.sampling.method = "pc"
    config.sampling.pc.n_steps = 500
    config.sampling.num_samples = 2000
    config.sampling.batch_size = 2000
    config.likelihood.num_examples = 1000
    config.likelihood.batch_size = 500
    config.likelihood.divergence = "exact"
    return config
