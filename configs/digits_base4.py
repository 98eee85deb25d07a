# A cascade's low-resolution base model: the embedded 8x8 digits area-downsampled by 2 in the data pipeline
# (data.downsample=2: each image is the mean of its 2x2 blocks, 4x4), the digits UNet at that size. With
# configs/digits_sr.py (4x4 -> 8x8) it makes the cascade of configs/digits_cascade.py.
#   python main.py --config=configs/digits_base4.py --workdir=runs/digits_base4 --mode=train
#   python main.py --config=configs/digits_base4.py --workdir=runs/digits_base4 --mode=sample
from configs import digits_vp


def get_config():
    config = digits_vp.get_config()
    config.data.downsample = 2
    config.data.image_size = 4   # the downsampled side: what the model sees
    config.training.n_iters = 3000
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.nfe = 20
    return config
