# Class-conditional digits: configs/digits_vp.py (same UNet size, steps and batch) with the 10 digit
# labels and 10 % label dropout, so one network gives s(x, t, y) and the unconditional s(x, t) for
# classifier-free guidance. Trains on 2 CPU cores in about the time of digits_vp.py.
#   python main.py --config=configs/digits_cond.py --workdir=runs/digits_cond --mode=train
#   python main.py --config=configs/digits_cond.py --workdir=runs/digits_cond --mode=sample \
#       --config.sampling.class_label=-1 --config.sampling.guidance_scale=1
#   python main.py --config=configs/digits_cond.py --workdir=runs/digits_cond --mode=likelihood
# Classifier guidance: train the noise-conditional classifier (config.classifier), then sample with it.
#   python main.py --config=configs/digits_cond.py --workdir=runs/digits_cond --mode=train_classifier
#   python main.py --config=configs/digits_cond.py --workdir=runs/digits_cond --mode=sample \
#       --config.sampling.class_label=-1 --config.sampling.guidance=classifier --config.sampling.guidance_scale=1
from configs import digits_vp


def get_config():
    config = digits_vp.get_config()
    config.data.num_classes = 10          # digits 0..9; index 10 of the class embedding is the null class
    config.training.label_dropout = 0.1
    config.sampling.num_samples = 100     # class_label=-1: 10 per digit, one row each
    config.sampling.batch_size = 100

    clf = config.classifier
    clf.nf = 16
    clf.ch_mult = (1, 2)
    clf.num_res_blocks = 1
    clf.n_iters = 2000
    clf.batch_size = 128
    return config
