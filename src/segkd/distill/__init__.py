"""Distillation losses (one module per family) and the registry that builds them from params.

Importing the package registers every loss in `LOSSES`.
"""

from segkd.distill.registry import (
    LOSSES,
    DistillLoss,
    Distillation,
    build_distillation,
    check_terms,
    register,
)
from segkd.distill import attention, feature, frequency, logits, similarity  # noqa: E402,F401  (register)

__all__ = ["LOSSES", "DistillLoss", "Distillation", "build_distillation", "check_terms", "register"]
