# Palette's multi-task model on the embedded 8x8 digits: one network for inpainting (box and half masks),
# uncropping and JPEG restoration (quality 5..15), one task drawn per training example. The condition has
# two parts, "masked" (kind `mask`) and "jpeg" (kind `image`); the part an example's task does not use is
# null (all NaN), so the mask channel / the image's present channel tell the network the task. At sampling
# time give one part (the other is null); the test-split conditions draw a task per example.
#   python main.py --config=configs/digits_palette.py --workdir=runs/digits_palette --mode=train
#   python main.py --config=configs/digits_palette.py --workdir=runs/digits_palette --mode=sample
import ml_collections

from configs import digits_vp


def get_config():
    config = digits_vp.get_config()
    add_multi_task(config, tasks="box,half,uncrop,jpeg")
    config.training.n_iters = 3000
    config.sampling.method = "dpm_solver"
    config.sampling.dpm_solver.nfe = 20
    return config


def add_multi_task(config, tasks: str):
    """Makes `config` a multi-task config: data.task (name multi) and its parts "masked" and "jpeg"."""
    config.data.task.update(name="multi", tasks=tasks)
    config.data.cond.masked = ml_collections.ConfigDict({"kind": "mask", "dropout": 0.0})
    config.data.cond.jpeg = ml_collections.ConfigDict({"kind": "image", "channels": config.data.num_channels,
                                                       "size": config.data.image_size, "dropout": 0.0})
    return config
