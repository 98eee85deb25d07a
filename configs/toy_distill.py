# Distillation on the 2-D toy mixture (8 Gaussians on a circle) with its exact score as the teacher,
# so the students are measured with no teacher error at all; a small MLP student, VP SDE.
#   python main.py --config=configs/toy_distill.py --workdir=runs/toy_distill --mode=distill
#   python main.py --config=configs/toy_distill.py --workdir=runs/toy_distill --mode=sample \
#     --config.sampling.method=student --config.sampling.student.n_steps=2
#   consistency: add --config.distill.method=consistency to both (another --workdir subfolder is used).
from configs import toy_vp


def get_config():
    config = toy_vp.get_config()   # its MLP (128, 128, 128), snapshots, logging, warm-up
    config.model.ema_rate = 0.95        # progressive: the sampled EMA; consistency: also the target theta-
    config.model.ema_warmup = False
    config.distill.teacher = "analytic"
    config.distill.teacher_steps = 16   # progressive rounds: 8, 4, 2, 1 student steps
    config.training.n_iters = 2000      # per progressive round; the consistency run
    config.optim.lr = 1e-3
    config.sampling.method = "student"
    config.sampling.student.n_steps = 1
    return config
