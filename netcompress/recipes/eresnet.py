"""ε-ResNet at the solver level (recipes-spec §3.2, §3.4, §5.3.1): `lr_policy: "epsilon_adaptive"`
and the epoch-end discard monitoring.

- `EpsilonAdaptiveSchedule`: the pure schedule, the source's `LearningRateSetter` on tensorpack
  0.2.0's timing. "Epoch 0" is the start (`before_train`); `epoch_end(E, h_E)` runs after epoch E
  (1-based) with the monitored value h_E; the rate it sets applies from the first iteration of E+1.
- `EpsilonResNetCallback`: the training callback a Solver gets when its TRAIN net has StrictIdentity
  layers or its lr_policy is "epsilon_adaptive". At each epoch end, after the solver's `Epoch E done`
  line and the layers' own `<layer>/is_discarded` lines (`StrictIdentity.epoch_end`, called by
  `LayerHooks`), it logs `discarded_cnt` (the sum of the layers' EMAs) and `discarded_ratio`, feeds
  `discarded_cnt` to the schedule, and gives the TEST nets' gates the epoch (their ε follows
  training's). `compress_epsilon_resnet --log` parses these lines.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NetcompressError
from ..layers.eresnet import StrictIdentity, format_stat
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from ..solvers.callbacks import TrainingCallback, register_callback
from ..solvers.lr import decimal, register_lr_policy

if TYPE_CHECKING:  # pragma: no cover
    from ..solvers.solver import Solver

__all__ = ["EpsilonAdaptiveSchedule", "EpsilonResNetCallback", "POLICY"]

log = get_logger("eresnet")

POLICY = "epsilon_adaptive"


class EpsilonAdaptiveSchedule:
    """`lr_policy: "epsilon_adaptive"` with `adaptive_lr` (§3.4 rule, tensorpack semantics).

    At the end of epoch E, with h the per-epoch history of the monitored value (h_E last):
      1. if len(h) < last_k + 1 or E − last_changed < last_k: if the schedule has an entry (E, v),
         the rate becomes v; otherwise it is unchanged;
      2. else, with w = h[−(last_k+1):], if max(w) < w[0] + threshold: as in 1;
      3. else: last_changed = E, schedule = [(e + E, v) for (e, v) in reset], rate = reset[0]'s v.
    Before the first epoch, the init entry with epoch 0 applies (base_lr without one). Values are
    the decimals written in the solver file (0.01, not float32's 0.0099999998), as the source's
    Python floats.

    Args:
        sp: the SolverParameter (reads `adaptive_lr` and `base_lr`).
        source: the solver file, for error messages.
    """

    def __init__(self, sp: pb.SolverParameter, source: str = "<SolverParameter>"):
        if not sp.HasField("adaptive_lr"):
            raise NetcompressError(f"{source}: lr_policy \"{POLICY}\" needs an adaptive_lr "
                                   "{ init {...} reset {...} } block")
        a = sp.adaptive_lr
        if a.monitor != "discarded_cnt":
            raise NetcompressError(f"{source}: adaptive_lr.monitor must be \"discarded_cnt\" (the sum of "
                                   f"the StrictIdentity EMAs), got \"{a.monitor}\"")
        if a.last_k < 1:
            raise NetcompressError(f"{source}: adaptive_lr.last_k must be at least 1, got {a.last_k}")
        if not len(a.reset):
            raise NetcompressError(f"{source}: adaptive_lr needs at least one reset {{ epoch value }} "
                                   "entry (the schedule that restarts when blocks are discarded)")
        for what, entries in (("init", a.init), ("reset", a.reset)):
            for ev in entries:
                if not ev.HasField("epoch") or not ev.HasField("value"):
                    raise NetcompressError(f"{source}: every adaptive_lr.{what} entry needs epoch and "
                                           f"value, got {{{str(ev).strip()}}}")
                if ev.epoch < 0:
                    raise NetcompressError(f"{source}: adaptive_lr.{what} epoch must be >= 0, got {ev.epoch}")
        # sorted by epoch, as the source sorts them
        self.reset = sorted(((int(e.epoch), decimal(e.value)) for e in a.reset), key=lambda t: t[0])
        self.schedule = sorted(((int(e.epoch), decimal(e.value)) for e in a.init), key=lambda t: t[0])
        self.threshold = decimal(a.threshold)
        self.last_k = int(a.last_k)
        self.last_changed = 0
        self.history: list[float] = []
        self.epoch = 0
        self._rate = decimal(sp.base_lr)
        self._apply_schedule(0)  # before_train: epoch_num = 0

    def _apply_schedule(self, epoch: int) -> None:
        for e, v in self.schedule:
            if e == epoch:
                self._rate = v
                return

    def epoch_end(self, epoch: int, discarded_cnt: float) -> None:
        """Epoch `epoch` (1-based) ended with the monitored value `discarded_cnt`."""
        if epoch <= self.epoch:
            raise NetcompressError(f"{POLICY}: epoch {epoch} ended after epoch {self.epoch}; "
                                   "epochs must increase")
        self.epoch = epoch
        self.history.append(float(discarded_cnt))
        k = self.last_k
        if len(self.history) < k + 1 or epoch - self.last_changed < k:
            self._apply_schedule(epoch)
            return
        window = self.history[-(k + 1):]
        if max(window) < window[0] + self.threshold:  # did not grow enough
            self._apply_schedule(epoch)
            return
        self.last_changed = epoch
        self.schedule = [(e + epoch, v) for e, v in self.reset]
        self._rate = self.schedule[0][1]

    def rate(self) -> float:
        """The rate of the iterations after the last `epoch_end` (before warm-up and min_lr)."""
        return self._rate

    # -- snapshots -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"schedule": [[e, v] for e, v in self.schedule], "last_changed": self.last_changed,
                "history": list(self.history), "epoch": self.epoch, "rate": self._rate}

    def load_state_dict(self, state: dict) -> None:
        self.schedule = [(int(e), float(v)) for e, v in state["schedule"]]
        self.last_changed = int(state["last_changed"])
        self.history = [float(h) for h in state["history"]]
        self.epoch = int(state["epoch"])
        self._rate = float(state["rate"])


def _gates(net) -> list[StrictIdentity]:
    return [layer for _, layer in net.named_layers() if isinstance(layer, StrictIdentity)]


class EpsilonResNetCallback(TrainingCallback):
    """The epoch-end monitoring of StrictIdentity layers and the `epsilon_adaptive` rate."""

    state_key = "epsilon_adaptive"

    def attach(self, solver: "Solver") -> None:
        sp = solver.param
        self.layers = _gates(solver.net)
        self.test_layers = [l for n in solver.test_nets for l in _gates(n)]
        self.schedule = EpsilonAdaptiveSchedule(sp, solver.source) if sp.lr_policy == POLICY else None
        if self.schedule is not None:
            solver.require_epoch_iters(f"lr_policy \"{POLICY}\"")
        for layer in self.layers:
            if layer.epsilon_start_epoch > 0:
                solver.require_epoch_iters(f"StrictIdentity layer '{layer.name}' (epsilon_start_epoch)")
        if self.layers and not solver.epoch_iters and solver.root:
            log.warning("%s: no epoch length (epoch_iters is 0 and no TRAIN data layer gives it): the "
                        "StrictIdentity epoch-end lines are not logged", solver.source)
        denominators = {l.ratio_denominator for l in self.layers}
        if len(denominators) > 1:
            raise NetcompressError(f"{solver.source}: the StrictIdentity layers of net '{solver.net.name}' "
                                   "disagree on strict_identity_param.discard_ratio_denominator; give all "
                                   "of them the same value")
        # Q8: the source divides by 3n + 2 for 3n blocks (BLOCKS_PLUS_2, faithful); BLOCKS is the fix.
        plus2 = denominators == {pb.StrictIdentityParameter.BLOCKS_PLUS_2}
        self.all_cnt = len(self.layers) + (2 if plus2 else 0)

    def nets_rebuilt(self, solver: "Solver") -> None:
        # A grown net has new layer objects (and maybe new gates): monitor those; the schedule stays.
        self.layers = _gates(solver.net)
        self.test_layers = [l for n in solver.test_nets for l in _gates(n)]
        plus2 = {l.ratio_denominator for l in self.layers} == {pb.StrictIdentityParameter.BLOCKS_PLUS_2}
        self.all_cnt = len(self.layers) + (2 if plus2 else 0)
        self.on_start(solver)

    def on_start(self, solver: "Solver") -> None:
        # Under a solver, ε follows the epochs (epsilon_start_epoch), resumed runs included.
        done = solver.iter // solver.epoch_iters if solver.epoch_iters else 0
        for layer in self.layers + self.test_layers:
            layer.set_epochs_done(done)

    def learning_rate(self, solver: "Solver", rate: float) -> float:
        if self.schedule is None:
            return rate
        # The schedule's rate, then the fork's warm-up and min_lr as for every policy (solvers/lr.py).
        rate, sp, it = self.schedule.rate(), solver.param, solver.iter
        if it < sp.rampup_interval:
            r0 = decimal(sp.rampup_lr)
            rate = min(rate, r0 + (rate - r0) * (it / sp.rampup_interval))
        return max(rate, decimal(sp.min_lr))

    def on_epoch_end(self, solver: "Solver", epoch: int) -> None:
        # The TRAIN-net gates have logged their lines (LayerHooks runs first); the TEST nets' take
        # the epoch for their ε.
        for layer in self.test_layers:
            layer.set_epochs_done(epoch)
        cnt = sum(l.ema for l in self.layers)
        if solver.root and self.layers:
            log.info("%s", format_stat("discarded_cnt", cnt))
            log.info("%s", format_stat("discarded_ratio", cnt / self.all_cnt))
        if self.schedule is None:
            return
        before = self.schedule.rate()
        self.schedule.epoch_end(epoch, cnt)
        after = self.schedule.rate()
        restarted = self.schedule.last_changed == epoch
        if solver.root and (after != before or restarted):
            log.info("%s: lr %g from epoch %d (iteration %d)%s", POLICY, after, epoch + 1, solver.iter,
                     " (discarded_cnt grew: the reset schedule restarts)" if restarted else "")

    def state_dict(self):
        return None if self.schedule is None else self.schedule.state_dict()

    def load_state_dict(self, state) -> None:
        if self.schedule is None:
            return
        if state is None:
            log.warning("the snapshot has no %s state: the adaptive learning rate restarts from its "
                        "initial schedule", POLICY)
            return
        self.schedule.load_state_dict(state)


@register_callback
def _epsilon_resnet(solver: "Solver") -> TrainingCallback | None:
    if solver.param.lr_policy == POLICY or _gates(solver.net):
        return EpsilonResNetCallback()
    return None


# The policy's rate comes from the callback's schedule; base_lr stands in where no callback runs.
register_lr_policy(POLICY, lambda sp, it: decimal(sp.base_lr))
