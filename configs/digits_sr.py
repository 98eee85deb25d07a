# Digits super-resolution x2 (4x4 -> 8x8): configs/mnist_sr.py's task on the embedded 8x8 digits, small
# enough for tests and a CPU benchmark (x4, 2x2 -> 8x8: --config.data.task.factor=4).
#   python main.py --config=configs/digits_sr.py --workdir=runs/digits_sr --mode=train
#   python main.py --config=configs/digits_sr.py --workdir=runs/digits_sr --mode=sample
from configs import digits_vp
from configs.mnist_sr import add_super_resolution


def get_config():
    config = digits_vp.get_config()
    add_super_resolution(config, factor=2, max_aug_level=0.2)
    config.training.n_iters = 3000
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.nfe = 20
    return config
