# Embedded default: scikit-learn's 8x8 digits (1797 real images, 17 grey levels), VP SDE, small UNet.
# Trains on 2 CPU cores in about ten minutes; nothing is downloaded.
#   python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=train
#   python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=sample
#   python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=likelihood
from configs import default


def get_config():
    config = default.get_default_configs()
    data = config.data
    data.dataset = "digits"
    data.image_size = 8
    data.num_channels = 1
    data.num_levels = 17
    data.centered = True
    data.uniform_dequantization = True   # train on the same dequantised data bits/dim is measured on

    model = config.model
    model.name = "unet"
    model.nf = 16
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()
    model.ema_rate = 0.999
    model.embedding_type = "fourier"
    model.fourier_scale = 16.0

    config.sde.name = "vpsde"
    training = config.training
    training.batch_size = 128
    training.n_iters = 8000
    training.snapshot_freq = 1000
    training.log_freq = 100
    training.steps_per_call = 1       # XLA:CPU runs scanned convolutions ~7x slower
    training.reduce_mean = True

    config.optim.lr = 2e-3
    config.optim.warmup = 200

    config.sampling.method = "ode"
    config.sampling.ode.solver = "tsit5"
    config.sampling.ode.rtol = 1e-4
    config.sampling.ode.atol = 1e-4
    config.sampling.num_samples = 64
    config.sampling.batch_size = 64

    config.likelihood.num_examples = 300   # the whole test split
    config.likelihood.batch_size = 150
    config.likelihood.divergence = "hutchinson"
    return config
