"""Gradient attacks on [0,1] images: FGSM and PGD, L-inf and L2, targeted or not."""

from safespot.attacks.fgsm import fgsm
from safespot.attacks.pgd import AttackResult, pgd

__all__ = ["AttackResult", "fgsm", "pgd"]
