"""ε-ResNet layers (recipes-spec §3.2, §5.2): `StrictIdentity`, the sparsity-promoting gate of a
residual branch, and `ChannelPad`, the zero-padded shortcut of a stage's first unit.

StrictIdentity computes, with L = `large` and ε = `epsilon`, over the WHOLE bottom blob (the batch
included):

    s = max(relu(F − ε) + relu(−F − ε))        # = max(|F| − ε)_+
    g = relu(1 − L·relu(1 − L·s))              # 0 when every |F| <= ε, 1 once s >= 1/L
    top0 = g·F,   top1 (optional) = [g == 0] (ZERO_GATE, CIFAR) or 1 − g (ONE_MINUS_GATE, ImageNet)

The same computation runs in TEST (no stored decision). A TRAIN forward also updates the layer's
one blob, `discard_ema` (a buffer), with the indicator, as tensorpack's `add_moving_summary` does:
`ema ← decay·ema + (1 − decay)·indicator` with `decay = min(ema_decay, (1 + t)/(10 + t))` and t the
training step (the solver's iteration; a forward counter when no solver sets it). This is the second
documented exception to pure forwards (after BatchNorm's statistics); it runs under no_grad, in place,
so the TEST net that shares the buffer sees it. `epoch_end(E)` logs `<layer>/is_discarded: <.5g>`
(tensorpack's ScalarPrinter format) and switches ε on after epoch `epsilon_start_epoch` (a net that
no solver drives, e.g. one tested after training, uses ε).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..log import get_logger
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer

__all__ = ["StrictIdentity", "ChannelPad", "ema_decay", "format_stat"]

log = get_logger("eresnet")

_SIP = pb.StrictIdentityParameter


def ema_decay(decay: float, step: int) -> float:
    """TF ExponentialMovingAverage with num_updates = step: min(decay, (1 + step)/(10 + step))."""
    return min(float(decay), (1.0 + step) / (10.0 + step))


def format_stat(name: str, value: float) -> str:
    """tensorpack's ScalarPrinter line, `'{}: {:.5g}'` (compress_epsilon_resnet parses it)."""
    return "{}: {:.5g}".format(name, float(value))


@register_layer("StrictIdentity")
class StrictIdentity(Layer):
    """The ε-ResNet gate g·F (see the module docstring). Bottom F (any shape) → g·F[, indicator].

    Blobs: `discard_ema` (1,), a buffer: the moving average of the discard indicator.
    """

    min_bottoms = max_bottoms = 1
    min_tops, max_tops = 1, 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        if not param.HasField("strict_identity_param") or not param.strict_identity_param.HasField("epsilon"):
            raise self.error("strict_identity_param.epsilon is required (e.g. strict_identity_param "
                             "{ epsilon: 2.5 })")
        sp = param.strict_identity_param
        self.epsilon = float(sp.epsilon)
        self.large = float(sp.large)
        self.epsilon_start_epoch = int(sp.epsilon_start_epoch)
        self.decay = float(sp.ema_decay)
        self.indicator = int(sp.discard_indicator)
        self.ratio_denominator = int(sp.discard_ratio_denominator)
        if not self.epsilon >= 0:  # (NaN too: every gate test false)
            raise self.error(f"strict_identity_param.epsilon must be >= 0, got {self.epsilon}")
        if not self.large > 0:
            raise self.error(f"strict_identity_param.large must be positive, got {self.large}")
        if not 0 <= self.decay <= 1:
            raise self.error(f"strict_identity_param.ema_decay must lie in [0, 1], got {self.decay}")
        if self.epsilon_start_epoch < 0:
            raise self.error("strict_identity_param.epsilon_start_epoch must be >= 0, got "
                             f"{self.epsilon_start_epoch}")
        self.add_blob("discard_ema", torch.zeros(1), learnable=False)
        self.step = 0             # the t of the EMA decay; the solver's iteration via set_iteration
        # Epochs finished, for epsilon_start_epoch. None: no solver drives this net (testing a trained
        # model, compress_epsilon_resnet), and ε applies, as the trained model's ε variable would.
        self.epochs_done: int | None = None
        self._last_gate: torch.Tensor | None = None  # g of the last forward (no host sync here)

    # -- the gate --------------------------------------------------------------------------
    @property
    def active_epsilon(self) -> float:
        """ε from the end of epoch `epsilon_start_epoch` on (tensorpack's (0, 0.0), (E, ε) schedule:
        0 during epochs 1..E, ε from E+1); 0 before. With the default 0, ε from the start. A net
        no solver drives (epochs_done None) uses ε."""
        if self.epochs_done is None or self.epochs_done >= self.epsilon_start_epoch:
            return self.epsilon
        return 0.0

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """g, a 0-d tensor in x's dtype, with the 4-ReLU formula's exact autograd (∂g/∂F = 0 off the
        micro-ramp, so dL/dF = g·dy)."""
        eps = self.active_epsilon
        if x.numel() == 0:
            s = x.new_zeros(())
        else:
            s = (F.relu(x - eps) + F.relu(-x - eps)).max()
        big = self.large
        return F.relu(1.0 - big * F.relu(1.0 - big * s))

    def discard_indicator(self, g: torch.Tensor) -> torch.Tensor:
        if self.indicator == _SIP.ONE_MINUS_GATE:
            return 1.0 - g
        return (g == 0).to(g.dtype)

    def forward(self, x: torch.Tensor):
        g = self.gate(x)
        y = g * x
        need_ind = len(self.layer_param.top) > 1 or (self.phase == pb.TRAIN and not x.is_meta)
        ind = self.discard_indicator(g.detach()) if need_ind else None
        if not x.is_meta:
            self._last_gate = g.detach()
            if self.phase == pb.TRAIN:
                self._update_ema(ind)
        if len(self.layer_param.top) > 1:
            return y, ind.reshape(1)
        return y

    @torch.no_grad()
    def _update_ema(self, indicator: torch.Tensor) -> None:
        d = ema_decay(self.decay, self.step)
        # TF's shadow update: ema -= (1 - decay) * (ema - value).
        self.discard_ema.sub_((1.0 - d) * (self.discard_ema - indicator.to(self.discard_ema.dtype)))
        self.step += 1  # the next forward's t unless the solver sets the iteration first

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        tops = [tuple(bottom_shapes[0])]
        if len(self.layer_param.top) > 1:
            tops.append((1,))
        return tops

    # -- solver hooks ----------------------------------------------------------------------
    def set_iteration(self, iteration: int) -> None:
        self.step = int(iteration)

    def set_epochs_done(self, epoch: int) -> None:
        """The 1-based epoch that just ended, 0 at the start of training (the ε-ResNet training
        callback, recipes/eresnet.py, sets it, on the TEST-net copies too)."""
        self.epochs_done = int(epoch)

    @property
    def last_gate(self) -> float | None:
        """g of the last forward (None before the first)."""
        return None if self._last_gate is None else float(self._last_gate)

    @property
    def ema(self) -> float:
        return float(self.discard_ema.detach().reshape(-1)[0])

    def epoch_end(self, epoch: int) -> None:
        """End of epoch `epoch` (1-based): log `<layer>/is_discarded: <EMA as .5g>`, update ε."""
        self.set_epochs_done(epoch)
        log.info("%s", format_stat(f"{self.name}/is_discarded", self.ema))

    def snapshot_state(self):
        return {"discard_ema": self.discard_ema.detach().cpu().clone(), "step": int(self.step),
                "epochs_done": -1 if self.epochs_done is None else int(self.epochs_done)}

    def restore_state(self, state) -> None:
        # Without a sidecar (a Caffe-written snapshot) the EMA comes from the caffemodel blob and
        # the step from the solver's iteration; only the ε schedule restarts.
        if not state:
            return
        with torch.no_grad():
            if "discard_ema" in state:
                self.discard_ema.copy_(torch.as_tensor(state["discard_ema"]).reshape(self.discard_ema.shape))
        self.step = int(state.get("step", self.step))
        if "epochs_done" in state:
            done = int(state["epochs_done"])
            self.epochs_done = None if done < 0 else done

    def extra_repr(self) -> str:
        return f"name={self.name!r}, epsilon={self.epsilon}, large={self.large:g}"


@register_layer("ChannelPad")
class ChannelPad(Layer):
    """Zeros along axis 1: (N, C, ...) → (N, pad_before + C + pad_after, ...).

    The ε-ResNet shortcut uses pad_before = pad_after = C/2 (tf.pad, inputs in the middle). A
    deploy net exports it as a frozen 1×1 Convolution with W[j, i] = 1 iff j = i + pad_before
    (`channel_pad_as_convolution`), which is exact.
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.channel_pad_param
        self.pad_before, self.pad_after = int(cp.pad_before), int(cp.pad_after)
        if len(self.bottom_shapes[0]) < 2:
            raise self.error(f"needs a bottom with a channel axis (N, C, ...), got shape "
                             f"{list(self.bottom_shapes[0])}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.pad lists the last axis first; pad only axis 1.
        pads = [0, 0] * (x.dim() - 2) + [self.pad_before, self.pad_after]
        return F.pad(x, pads)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = list(bottom_shapes[0])
        s[1] += self.pad_before + self.pad_after
        return [tuple(s)]


def channel_pad_weight(channels_in: int, pad_before: int, pad_after: int) -> torch.Tensor:
    """The (C_out, C_in, 1, 1) weight of the 1×1 Convolution equal to ChannelPad."""
    c_out = channels_in + pad_before + pad_after
    w = torch.zeros(c_out, channels_in, 1, 1)
    idx = torch.arange(channels_in)
    w[idx + pad_before, idx, 0, 0] = 1.0
    return w


def channel_pad_as_convolution(param: pb.LayerParameter, channels_in: int) -> tuple[pb.LayerParameter, torch.Tensor]:
    """A BVLC Convolution LayerParameter (1×1, no bias, lr_mult 0, decay_mult 0) and its weight,
    equal to the ChannelPad layer `param` on a `channels_in`-channel bottom."""
    cp = param.channel_pad_param
    out = pb.LayerParameter(name=param.name, type="Convolution")
    out.bottom.extend(param.bottom)
    out.top.extend(param.top)
    out.include.extend(param.include)
    out.exclude.extend(param.exclude)
    spec = out.param.add()
    spec.lr_mult = 0.0
    spec.decay_mult = 0.0
    c = out.convolution_param
    c.num_output = channels_in + int(cp.pad_before) + int(cp.pad_after)
    c.kernel_size.append(1)
    c.bias_term = False
    return out, channel_pad_weight(channels_in, int(cp.pad_before), int(cp.pad_after))
