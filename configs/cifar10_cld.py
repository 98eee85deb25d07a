# CIFAR-10 with critically-damped Langevin diffusion (Dockhorn, Vahdat & Kreis, ICLR 2022): beta = 4,
# M^-1 = 4, gamma = 0.04, hybrid score matching with the mixed score, the DDPM++ network on (x, v)
# (6 input channels), SSCS sampling.
#   python main.py --config=configs/cifar10_cld.py --workdir=runs/c10_cld --mode=train \
#       --config.data.data_dir=/path/to/cifar-10-python   (local files; nothing is downloaded)
from configs import cifar10_vp, default
from configs.digits_cld import cld_sde


def get_config():
    config = default.get_default_configs()
    cifar10_vp.cifar10_data(config)
    cifar10_vp.ddpmpp_model(config.model)
    cld_sde(config)
    config.training.reduce_mean = True
    config.sampling.sscs.n_steps = 500  # the paper's SSCS CIFAR-10 runs use 150-1000 steps
    return config
