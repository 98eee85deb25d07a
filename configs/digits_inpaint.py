# Palette-style inpainting on the embedded 8x8 digits through the `mask` kind: each training example gets a
# random box (sides 2..4) or half-image mask; data.task.masks=uncrop (or box,half,uncrop) trains uncropping.
#   python main.py --config=configs/digits_inpaint.py --workdir=runs/digits_inpaint --mode=train
#   python main.py --config=configs/digits_inpaint.py --workdir=runs/digits_inpaint --mode=sample
import ml_collections

from configs import digits_vp


def get_config():
    config = digits_vp.get_config()
    add_inpainting(config, masks="box,half")
    config.training.n_iters = 3000
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.nfe = 20
    return config


def add_inpainting(config, masks: str):
    """Makes `config` an inpainting config: data.task and its `mask` condition part "masked"."""
    config.data.task.update(name="inpainting", masks=masks)
    config.data.cond.masked = ml_collections.ConfigDict({"kind": "mask", "dropout": 0.0})
    return config
