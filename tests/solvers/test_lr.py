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
    # Lines of tests/fixtures/caffe/lenet/train_lenet.log(.xz) (inv, gamma 1e-4, power 0.75).
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
    with pytest.raises(NetcompressError, match="Unknown learning rate policy: \"cosin\""):
        learning_rate(sp(lr_policy="cosin"), 0, 0)


# ---- recipe policies (recipes-spec 5.3, T4) ------------------------------------------------------------

def test_cosine_with_warm_up_is_micronets_warmup_cosine_exactly():
    # T4: MicroNet, batch 64, 782 iterations per epoch, 5 warm-up epochs, 300 epochs.
    s = sp(lr_policy="cosine", base_lr=0.1, rampup_interval=3910, rampup_lr=0.001, max_iter=234600,
           momentum_form=pb.SolverParameter.LR_OUTSIDE)
    got = dict(zip((0, 1955, 3909, 3910, 119255, 234599), rates(s, (0, 1955, 3909, 3910, 119255, 234599))))
    assert got[0] == 0.001 and got[1955] == 0.0505 and got[3909] == 0.09997468030690537
    assert got[3910] == 0.1 and got[119255] == 0.05
    assert got[234599] == pytest.approx(4.636e-12, rel=1e-3)
    # the source's float64 formula, term for term, at every iteration of a coarse sweep
    for it in range(0, 234600, 997):
        w = 3910
        want = 0.001 + (0.1 - 0.001) * (it / w) if it < w else \
            0.5 * (1 + math.cos(math.pi * (it - w) / (234600 - w))) * 0.1
        assert rates(s, [it])[0] == pytest.approx(want, rel=1e-15, abs=1e-300)
    # compression steps: no warm-up, base 0.001
    assert rates(sp(lr_policy="cosine", base_lr=0.001, max_iter=234600), [117300]) == [0.0005]


def test_cosine_needs_max_iter_past_the_warm_up():
    with pytest.raises(NetcompressError, match=r'"cosine" needs max_iter \(100\) > rampup_interval \(100\)'):
        rates(sp(lr_policy="cosine", max_iter=100, rampup_interval=100), [0])


def test_multistep_with_cumulative_stepgamma():
    # T4 (INRIA): milestones [120, 160, 180] epochs, stepped at the epoch start: stepvalue (m - 1) * I.
    I = 50
    s = sp(lr_policy="multistep", base_lr=0.1, stepvalue=[119 * I, 159 * I, 179 * I], stepgamma=[0.1, 0.01, 0.01])
    by_epoch = {}
    step = 0
    for it in range(0, 200 * I):
        r, step = learning_rate(s, it, step)
        by_epoch.setdefault(it // I + 1, set()).add(r)
    factor = {e: next(iter(v)) / 0.1 for e, v in by_epoch.items()}
    assert all(len(v) == 1 for v in by_epoch.values())  # constant within an epoch
    assert factor[1] == factor[119] == 1.0
    assert factor[120] == pytest.approx(0.1, rel=1e-15) and factor[159] == pytest.approx(0.1, rel=1e-15)
    assert factor[160] == pytest.approx(1e-3, rel=1e-15) and factor[179] == pytest.approx(1e-3, rel=1e-15)
    assert factor[180] == pytest.approx(1e-5, rel=1e-15) and factor[200] == pytest.approx(1e-5, rel=1e-15)
    with pytest.raises(NetcompressError, match="one stepgamma per stepvalue"):
        rates(sp(lr_policy="multistep", stepvalue=[1, 2], stepgamma=[0.1]), [0])


def test_recipe_policies_are_registered_and_unknown_ones_listed():
    from netcompress.solvers.lr import register_lr_policy

    register_lr_policy("test_half", lambda s, it: 0.5 * s.base_lr)
    assert rates(sp(lr_policy="test_half", base_lr=0.25), [3]) == [0.125]
    with pytest.raises(NetcompressError, match=r'Unknown learning rate policy: "nope" \(known: .*cosine.*test_half'):
        rates(sp(lr_policy="nope"), [0])
