"""Learning-rate policies (Caffe's SGDSolver::GetLearningRate) plus the fork's warm-up and min_lr.

reference-semantics 4.2: the policy rate first; then, while `iter < rampup_interval`,
`min(rate, r0 + (rate - r0) * iter / rampup_interval)` with r0 = rampup_lr; then `max(rate, min_lr)`.

Caffe's policies compute in float32, as Caffe's Dtype=float does (logged rates agree to the last
digit). The recipe policies of recipes-spec 5.3 reproduce PyTorch/TensorFlow schedulers, which
compute in float64 from the decimal values a user writes: `"cosine"` (with the warm-up above, a
warm-up cosine schedule), `"multistep"` with `stepgamma` (cumulative gammas), and
policies registered by recipes with `register_lr_policy` (e.g. a schedule a training callback
drives). Their proto floats are read as the shortest decimal that gives the stored float32 (0.1,
not 0.10000000149), so the rates equal the source's.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import NetcompressError
from ..proto import caffe_pb2 as pb

__all__ = ["learning_rate", "check_lr_policy", "LR_POLICIES", "register_lr_policy", "decimal"]

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "cosine")

_f32 = np.float32

# name -> fn(sp, it) -> float64 rate before warm-up and min_lr (registered by recipes)
_RECIPE_POLICIES: dict[str, Callable[[pb.SolverParameter, int], float]] = {}


def register_lr_policy(name: str, fn: Callable[[pb.SolverParameter, int], float]) -> None:
    """Add an `lr_policy` computed in float64 by `fn(solver_param, iter)`; warm-up and min_lr apply
    after it. A schedule with state registers a policy here and sets its rate from a training
    callback (`TrainingCallback.learning_rate`)."""
    if name in LR_POLICIES:
        raise NetcompressError(f"lr_policy \"{name}\" is built in")
    _RECIPE_POLICIES[name] = fn


def decimal(x: float) -> float:
    """A float32 proto field as the decimal the user wrote (the shortest one that rounds to it)."""
    return float(str(np.float32(x)))


def _known() -> str:
    return ", ".join(list(LR_POLICIES) + sorted(_RECIPE_POLICIES))


def _pow(x: float, y: float) -> float:
    # Python raises where C's pow gives inf or nan; the solver then refuses the non-finite rate.
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def check_lr_policy(sp: pb.SolverParameter, where: str) -> None:
    """What each policy needs, checked before training (Caffe finds some of it only at the iteration
    that needs it, or never): a known policy; "step" a positive stepsize; "multistep" stepvalues
    >= 0 in increasing order (and, with stepgamma, one finite gamma >= 0 per stepvalue); "poly" a
    positive max_iter; "cosine" max_iter > rampup_interval; a gamma >= 0 for the policies that raise
    it to a power ("step", "exp", "multistep", "inv")."""
    policy = sp.lr_policy
    if policy not in LR_POLICIES and policy not in _RECIPE_POLICIES:
        raise NetcompressError(f"{where}: Unknown learning rate policy: \"{policy}\" (known: {_known()})")
    if policy == "step" and sp.stepsize <= 0:
        raise NetcompressError(f"{where}: lr_policy \"step\" needs a positive stepsize, got {sp.stepsize}")
    if policy == "multistep":
        values = list(sp.stepvalue)
        for k, v in enumerate(values):
            if v < 0:
                raise NetcompressError(f"{where}: stepvalue must be >= 0, got stepvalue[{k}] = {v}")
            if k and v <= values[k - 1]:
                raise NetcompressError(f"{where}: stepvalue must be in increasing order, got {values[k - 1]} "
                                       f"then {v} (stepvalue[{k - 1}], stepvalue[{k}])")
        if len(sp.stepgamma):
            if len(sp.stepgamma) < len(values):
                raise NetcompressError(f"{where}: lr_policy \"multistep\" with stepgamma needs one stepgamma "
                                       f"per stepvalue ({len(values)} stepvalue, {len(sp.stepgamma)} stepgamma)")
            for k, g in enumerate(sp.stepgamma):
                if not (math.isfinite(g) and g >= 0):
                    raise NetcompressError(f"{where}: stepgamma must be finite and >= 0, got stepgamma[{k}] = {g:g}")
    if policy in ("step", "exp", "multistep", "inv") and sp.gamma < 0:
        raise NetcompressError(f"{where}: lr_policy \"{policy}\" needs gamma >= 0, got {sp.gamma:g}")
    if policy == "poly" and sp.max_iter <= 0:
        raise NetcompressError(f"{where}: lr_policy \"poly\" needs a positive max_iter, got {sp.max_iter}")
    if policy == "cosine" and sp.max_iter <= sp.rampup_interval:
        raise NetcompressError(f"{where}: lr_policy \"cosine\" needs max_iter ({sp.max_iter}) > rampup_interval "
                               f"({sp.rampup_interval})")


def learning_rate(sp: pb.SolverParameter, it: int, current_step: int) -> tuple[float, int]:
    """The rate for iteration `it` and the updated multistep/step counter.

    Arithmetic is float32 like Caffe's Dtype=float (so logged rates agree to the last digit).
    """
    policy = sp.lr_policy
    if policy == "cosine" or policy in _RECIPE_POLICIES or (policy == "multistep" and len(sp.stepgamma)):
        return _recipe_rate(sp, it, current_step)
    base = _f32(sp.base_lr)
    gamma = _f32(sp.gamma)
    power = _f32(sp.power)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if policy == "fixed":
            rate = base
        elif policy == "step":
            if sp.stepsize <= 0:
                raise NetcompressError("lr_policy \"step\" needs a positive stepsize")
            current_step = it // sp.stepsize
            rate = base * _f32(_pow(float(gamma), current_step))
        elif policy == "exp":
            rate = base * _f32(_pow(float(gamma), it))
        elif policy == "inv":
            rate = base * _f32(_pow(float(_f32(1) + gamma * _f32(it)), -float(power)))
        elif policy == "multistep":
            if current_step < len(sp.stepvalue) and it >= sp.stepvalue[current_step]:
                current_step += 1
                from ..log import get_logger
                get_logger("solver").info("MultiStep Status: Iteration %d, step = %d", it, current_step)
            rate = base * _f32(_pow(float(gamma), current_step))
        elif policy == "poly":
            if sp.max_iter <= 0:
                raise NetcompressError("lr_policy \"poly\" needs a positive max_iter")
            frac = _f32(1) - _f32(it) / _f32(sp.max_iter)
            rate = base * _f32(_pow(float(frac), float(power))) if frac > 0 else _f32(0)
        elif policy == "sigmoid":
            rate = base * (_f32(1) / (_f32(1) + _f32(_exp(-float(gamma) * (it - sp.stepsize)))))
        else:
            raise NetcompressError(f"Unknown learning rate policy: \"{policy}\" (known: {_known()})")
        rate = _f32(rate)
        if it < sp.rampup_interval:
            alpha = _f32(it) / _f32(sp.rampup_interval)
            r0 = _f32(sp.rampup_lr)
            rate = min(rate, _f32(r0 + (rate - r0) * alpha))
        rate = max(rate, _f32(sp.min_lr))
    return float(rate), current_step


def _recipe_rate(sp: pb.SolverParameter, it: int, current_step: int) -> tuple[float, int]:
    """The float64 recipe policies (module docstring), then warm-up and min_lr in float64."""
    policy = sp.lr_policy
    base = decimal(sp.base_lr)
    warm = int(sp.rampup_interval)
    if policy == "cosine":
        # recipes-spec 5.3: base during the warm-up, then half a cosine from base to 0 at max_iter.
        if sp.max_iter <= warm:
            raise NetcompressError(f"lr_policy \"cosine\" needs max_iter ({sp.max_iter}) > rampup_interval ({warm})")
        rate = base if it < warm else 0.5 * base * (1.0 + math.cos(math.pi * (it - warm) / (sp.max_iter - warm)))
    elif policy == "multistep":
        gammas = [decimal(g) for g in sp.stepgamma]
        if len(gammas) < len(sp.stepvalue):
            raise NetcompressError(f"lr_policy \"multistep\" with stepgamma needs one stepgamma per stepvalue "
                                   f"({len(sp.stepvalue)} stepvalue, {len(gammas)} stepgamma)")
        if current_step < len(sp.stepvalue) and it >= sp.stepvalue[current_step]:
            current_step += 1
            from ..log import get_logger
            get_logger("solver").info("MultiStep Status: Iteration %d, step = %d", it, current_step)
        rate = base * math.prod(gammas[:current_step])
    else:
        rate = float(_RECIPE_POLICIES[policy](sp, it))
    if it < warm:
        r0 = decimal(sp.rampup_lr)
        rate = min(rate, r0 + (rate - r0) * (it / warm))
    return max(rate, decimal(sp.min_lr)), current_step
