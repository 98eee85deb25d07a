# A two-stage cascade on the embedded digits: configs/digits_base4.py (4x4, the digits area-downsampled by 2)
# then configs/digits_sr.py (x2, 4x4 -> 8x8, trained with conditioning augmentation s ~ U(0, 0.2)). The SR
# stage's input is the base sample plus noise of level sampling.aug_level (default here 0.1, the middle of the
# training range; CDM picks a fixed level on validation data: benchmarks/results/cascade.md compares levels).
#   python main.py --config=configs/digits_base4.py --workdir=runs/digits_base4 --mode=train
#   python main.py --config=configs/digits_sr.py --workdir=runs/digits_sr --mode=train
#   python main.py --config=configs/digits_cascade.py --workdir=runs/digits_cascade --mode=cascade \
#       --config.cascade.base_workdir=runs/digits_base4 --config.cascade.sr_workdir=runs/digits_sr
from configs import digits_sr


def get_config():
    config = digits_sr.get_config()            # the SR model's config: model, sde, data.task
    config.cascade.base_config = "configs/digits_base4.py"
    config.cascade.base_workdir = "runs/digits_base4"
    config.cascade.sr_workdir = "runs/digits_sr"
    config.sampling.aug_level = 0.1
    return config
