# CIFAR-10, VE SDE, continuous NCSN++ (Song et al. 2021, "NCSN++ cont.").
#   python main.py --config=configs/cifar10_ve.py --workdir=runs/c10_ve --mode=train \
#       --config.data.data_dir=/path/to/cifar-10-python
from configs import cifar10_vp, default


def get_config():
    config = default.get_default_configs()
    cifar10_vp.cifar10_data(config)
    model = config.model
    cifar10_vp.ddpmpp_model(model)
    model.name = "ncsnpp"
    model.ema_rate = 0.999
    model.fir = True
    model.fir_kernel = (1, 3, 3, 1)
    model.progressive_input = "residual"
    model.embedding_type = "fourier"
    model.fourier_scale = 16.0
    config.sde.name = "vesde"
    config.sde.sigma_min = 0.01
    config.sde.sigma_max = 50.0
    config.training.continuous = True
    config.training.reduce_mean = False
    config.sampling.method = "pc"
    config.sampling.pc.predictor = "reverse_diffusion"
    config.sampling.pc.corrector = "langevin"
    config.sampling.pc.snr = 0.16
    return config
