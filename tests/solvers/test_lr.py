"""Learning-rate policies, warm-up and min_lr against closed forms (reference-semantics 4.2)."""
from __future__ import annotations

import math

import pytest

from netcompress.errors import NetcompressError
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers.lr import learning_rate


def sp(**kw) -> pb.SolverParameter:
    s = pb.SolverParameter(base_lr=0.01)
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(s, k).extend(v)
        else:
            setattr(s, k, v)
    return s


def rates(s, iters):
    step, out = 0, []
    for it in iters:
        r, step = learning_rate(s, it, step)
        out.append(r)
    return out


CLOSED = {
    "fixed": (dict(), lambda it: 0.01),
    "step": (dict(gamma=0.1, stepsize=30), lambda it: 0.01 * 0.1 ** (it // 30)),
    "exp": (dict(gamma=0.99), lambda it: 0.01 * 0.99 ** it),
    "inv": (dict(gamma=1e-4, power=0.75), lambda it: 0.01 * (1 + 1e-4 * it) ** -0.75),
    "poly": (dict(power=2.0, max_iter=100), lambda it: 0.01 * (1 - it / 100) ** 2),
    "sigmoid": (dict(gamma=-0.05, stepsize=50), lambda it: 0.01 / (1 + math.exp(0.05 * (it - 50)))),
}


@pytest.mark.parametrize("policy", sorted(CLOSED))
def test_policies_closed_form(policy):
    kw, f = CLOSED[policy]
    s = sp(lr_policy=policy, **kw)
    its = list(range(0, 100, 7))
    for it, r in zip(its, rates(s, its)):
        assert r == pytest.approx(f(it), rel=2e-6), (policy, it)


def test_multistep_advances_once_per_call():
    s = sp(lr_policy="multistep", gamma=0.5, stepvalue=[3, 5, 9])
    got = rates(s, range(12))
    expected = [0.01] * 3 + [0.005] * 2 + [0.0025] * 4 + [0.00125] * 3
    assert got == pytest.approx(expected, rel=1e-6)


def test_inv_rates_match_caffe_log():
    # Lines of ../shared/fixtures/caffe/lenet/train_lenet.log (inv, gamma 1e-4, power 0.75).
    s = sp(lr_policy="inv", gamma=1e-4, power=0.75)
    logged = {0: "0.01", 100: "0.00992565", 500: "0.00964069", 1400: "0.00906403", 4500: "0.00756788",
              4900: "0.00741498"}
    for it, text in logged.items():
        assert "%g" % learning_rate(s, it, 0)[0] == text


def test_warmup_min_rule():
    # r = min(policy, r0 + (policy - r0) * it / R) while it < R
    s = sp(lr_policy="inv", gamma=1e-3, power=0.75, rampup_interval=10, rampup_lr=1e-4)
    for it in range(15):
        policy = 0.01 * (1 + 1e-3 * it) ** -0.75
        exp = min(policy, 1e-4 + (policy - 1e-4) * it / 10) if it < 10 else policy
        assert learning_rate(s, it, 0)[0] == pytest.approx(exp, rel=2e-6)
    assert learning_rate(s, 0, 0)[0] == pytest.approx(1e-4)
    # r0 above the policy rate: the min keeps the policy rate
    s2 = sp(lr_policy="fixed", rampup_interval=10, rampup_lr=0.5)
    assert learning_rate(s2, 3, 0)[0] == pytest.approx(0.01)
    # unset rampup_lr counts as 0
    s3 = sp(lr_policy="fixed", rampup_interval=4)
    assert rates(s3, range(6)) == pytest.approx([0, 0.0025, 0.005, 0.0075, 0.01, 0.01], abs=1e-9)


def test_min_lr_clamps_after_warmup():
    s = sp(lr_policy="exp", gamma=0.5, min_lr=0.001, rampup_interval=2, rampup_lr=0.0)
    got = rates(s, range(6))
    # it 0: warm-up gives 0 -> clamped to 0.001; it 1: min(0.005, 0.0025)=0.0025; then 0.0025, 0.00125->0.00125...
    assert got == pytest.approx([0.001, 0.0025, 0.0025, 0.00125, 0.001, 0.001], rel=1e-6)


def test_unknown_policy_is_clear():
    with pytest.raises(NetcompressError, match="Unknown learning rate policy: \"cosine\""):
        learning_rate(sp(lr_policy="cosine"), 0, 0)
