"""Few-step students distilled from a score model: progressive distillation (Salimans & Ho 2022)
and consistency distillation (Song et al. 2023). Library pieces only (losses, the student's
parameterisation, the frozen teacher's step); the rounds, checkpoints and CLI live in
`score_sde.drivers.distill`, sampling in `solvers.get("student")`.
"""

from score_sde.distill.consistency import DISTANCES, consistency_loss_fn, consistency_times, distance
from score_sde.distill.progressive import WEIGHTINGS, progressive_loss_fn, progressive_target, weight
from score_sde.distill.student import PARAMETERISATIONS, Student
from score_sde.distill.teacher import split_teacher, teacher_step

__all__ = ["DISTANCES", "PARAMETERISATIONS", "Student", "WEIGHTINGS", "consistency_loss_fn", "consistency_times",
           "distance", "progressive_loss_fn", "progressive_target", "split_teacher", "teacher_step", "weight"]
