# CIFAR-10, VP SDE, continuous DDPM++ (Song et al. 2021, "DDPM++ cont. (VP)").
#   python main.py --config=configs/cifar10_vp.py --workdir=runs/c10_vp --mode=train \
#       --config.data.data_dir=/path/to/cifar-10-python   (local files; nothing is downloaded)
from configs import default


def ddpmpp_model(model):
    model.name = "ddpmpp"
    model.ema_rate = 0.9999
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.dropout = 0.1
    model.resblock_type = "biggan"
    model.fir = False
    model.skip_rescale = True
    model.progressive = "none"
    model.progressive_input = "none"
    model.progressive_combine = "sum"
    model.embedding_type = "positional"
    model.init_scale = 0.0


def cifar10_data(config):
    data = config.data
    data.dataset = "cifar10"
    data.image_size = 32
    data.num_channels = 3
    data.centered = True
    data.random_flip = True
    data.num_levels = 256
    config.training.batch_size = 128
    config.training.n_iters = 1_300_001
    config.training.snapshot_freq = 50_000
    config.training.log_freq = 50
    config.optim.lr = 2e-4
    config.optim.warmup = 5000
    config.optim.grad_clip = 1.0
    config.sampling.num_samples = 64
    config.likelihood.num_examples = 10_000
    config.eval.num_samples = 50_000  # FID/KID/IS on 50k samples, as Song et al. 2021 (with --config.eval.inception_weights)


def get_config():
    config = default.get_default_configs()
    cifar10_data(config)
    ddpmpp_model(config.model)
    config.sde.name = "vpsde"
    config.training.continuous = True
    config.training.reduce_mean = True
    config.sampling.method = "pc"
    config.sampling.pc.predictor = "euler_maruyama"
    config.sampling.pc.corrector = "none"
    return config
