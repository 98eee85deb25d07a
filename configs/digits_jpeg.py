# Palette-style JPEG restoration on the embedded 8x8 digits: the condition part "jpeg" (kind `image`) is the
# grayscale baseline JPEG round trip of the digit (score_sde.jpeg, Pillow's codec in JAX) at a quality drawn
# per example from 5..15 (data.task.quality_min / quality_max).
#   python main.py --config=configs/digits_jpeg.py --workdir=runs/digits_jpeg --mode=train
#   python main.py --config=configs/digits_jpeg.py --workdir=runs/digits_jpeg --mode=sample
import ml_collections

from configs import digits_vp


def get_config():
    config = digits_vp.get_config()
    add_jpeg(config)
    config.training.n_iters = 3000
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.nfe = 20
    return config


def add_jpeg(config, quality_min: int = 5, quality_max: int = 15):
    """Makes `config` a JPEG-restoration config: data.task and its `image` condition part "jpeg"."""
    config.data.task.update(name="jpeg", quality_min=quality_min, quality_max=quality_max)
    config.data.cond.jpeg = ml_collections.ConfigDict({"kind": "image", "channels": config.data.num_channels,
                                                       "size": config.data.image_size, "dropout": 0.0})
    return config
