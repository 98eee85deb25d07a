# CIFAR-10, sub-VP SDE, continuous DDPM++ (Song et al. 2021, "DDPM++ cont. (sub-VP)").
#   python main.py --config=configs/cifar10_subvp.py --workdir=runs/c10_subvp --mode=train \
#       --config.data.data_dir=/path/to/cifar-10-python
from configs import cifar10_vp


def get_config():
    config = cifar10_vp.get_config()
    config.sde.name = "subvpsde"
    return config
