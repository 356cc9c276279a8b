"""Learning-rate policies (Caffe's SGDSolver::GetLearningRate) plus the fork's warm-up and min_lr.

reference-semantics 4.2: the policy rate first; then, while `iter < rampup_interval`,
`min(rate, r0 + (rate - r0) * iter / rampup_interval)` with r0 = rampup_lr; then `max(rate, min_lr)`.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import NetcompressError
from ..proto import caffe_pb2 as pb

__all__ = ["learning_rate", "LR_POLICIES"]

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

_f32 = np.float32


def learning_rate(sp: pb.SolverParameter, it: int, current_step: int) -> tuple[float, int]:
    """The rate for iteration `it` and the updated multistep/step counter.

    Arithmetic is float32 like Caffe's Dtype=float (so logged rates agree to the last digit).
    """
    policy = sp.lr_policy
    base = _f32(sp.base_lr)
    gamma = _f32(sp.gamma)
    power = _f32(sp.power)
    with np.errstate(over="ignore", under="ignore"):
        if policy == "fixed":
            rate = base
        elif policy == "step":
            if sp.stepsize <= 0:
                raise NetcompressError("lr_policy \"step\" needs a positive stepsize")
            current_step = it // sp.stepsize
            rate = base * _f32(math.pow(float(gamma), current_step))
        elif policy == "exp":
            rate = base * _f32(math.pow(float(gamma), it))
        elif policy == "inv":
            rate = base * _f32(math.pow(float(_f32(1) + gamma * _f32(it)), -float(power)))
        elif policy == "multistep":
            if current_step < len(sp.stepvalue) and it >= sp.stepvalue[current_step]:
                current_step += 1
                from ..log import get_logger
                get_logger("solver").info("MultiStep Status: Iteration %d, step = %d", it, current_step)
            rate = base * _f32(math.pow(float(gamma), current_step))
        elif policy == "poly":
            if sp.max_iter <= 0:
                raise NetcompressError("lr_policy \"poly\" needs a positive max_iter")
            frac = _f32(1) - _f32(it) / _f32(sp.max_iter)
            rate = base * _f32(math.pow(float(frac), float(power))) if frac > 0 else _f32(0)
        elif policy == "sigmoid":
            rate = base * (_f32(1) / (_f32(1) + _f32(math.exp(-float(gamma) * (it - sp.stepsize)))))
        else:
            raise NetcompressError(f"Unknown learning rate policy: \"{policy}\" (known: {', '.join(LR_POLICIES)})")
        rate = _f32(rate)
        if it < sp.rampup_interval:
            alpha = _f32(it) / _f32(sp.rampup_interval)
            r0 = _f32(sp.rampup_lr)
            rate = min(rate, _f32(r0 + (rate - r0) * alpha))
        rate = max(rate, _f32(sp.min_lr))
    return float(rate), current_step
