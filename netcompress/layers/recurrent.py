"""Caffe's recurrent layers: RNN, LSTM and LSTMUnit.

Caffe runs RNN and LSTM as a hidden net unrolled over the T timesteps of the input (recurrent_layer.cpp);
here the same equations run as a Python loop over t, with the input transform of every timestep computed by
one product over T*N rows first, as the unrolled net's `x_transform` does. Bottoms: x (T, N, ...), the
sequence continuation indicators cont (T, N), an optional static input (N, ...) and, with
`expose_hidden: true`, the initial state (h0, and c0 for LSTM, each (1, N, num_output)); tops: the output
(T, N, num_output) and, with `expose_hidden`, the final state in the same order (h_T, then c_T).

    RNN:  h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]);  o_t = tanh(W_ho h_t + b_o)
    LSTM: [i' f' o' g'] = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]   (gate order i, f, o, g)
          c_t = cont_t sigmoid(f') c_{t-1} + sigmoid(i') tanh(g');  h_t = sigmoid(o') tanh(c_t)   (LSTMUnit)

Blobs, in Caffe's order (its unrolled net's parameters in layer order, shared copies left out), so that
caffemodels load both ways: LSTM [W_xc (4H, K), b_c (4H), W_xc_static (4H, K_static) with a static input,
W_hc (4H, H)]; RNN [W_xh (H, K), b_h (H), W_xh_static (H, K_static), W_hh (H, H), W_ho (H, H), b_o (H)], where
K = prod(x.shape[2:]) and K_static = prod(static.shape[1:]). Weights take `weight_filler`, biases
`bias_filler`, drawn in Caffe's order; Caffe's unrolled net fills every timestep's copy of a recurrent weight
before it shares the first, so timesteps 2..T draw (and discard) values too, and the layers after this one
start from the same point of the stream as in Caffe.

Caffe's behaviour reproduced, beyond the equations:
- Without `expose_hidden`, each forward starts from the final state of the previous forward of this layer
  (zeros before the first): a stream continues across batches where cont is 1 at t = 0. No gradient crosses
  batches. The state is kept as Caffe keeps it, in a buffer sized for the largest N seen: a smaller N
  continues the leading streams, an N larger than any before starts from zeros (Caffe's blob reallocates).
  `reset_state()` is Caffe's Reset(); the solver's snapshot keeps the state, so that a resumed run continues
  as an uninterrupted one. This is a documented exception to `Layer.forward` being pure, like BatchNorm's
  statistics.
- No gradient reaches cont; Caffe aborts a backward that asks for one, so a TRAIN layer with an explicit
  `propagate_down: true` on cont is refused. With `expose_hidden`, Caffe's layer shares only the data of
  h0/c0 and of the h_T/c_T tops with its unrolled net, never their diffs: h0/c0 get no gradient and a
  gradient arriving at h_T/c_T is dropped. The gradients reach x, the static input and the weights.
- T is fixed when the layer is built (Caffe: "input number of timesteps changed"); N may change.
- The LSTM unit evaluates sigmoid(x) = 1 / (1 + exp(-x)) and tanh(x) = 2 sigmoid(2x) - 1 in double, as Caffe's
  CPU code does (its literals are doubles), and its backward is Caffe's: the derivative of the forget gate
  is taken as f (1 - f) with f = cont sigmoid(f'), the true derivative when cont is 0 or 1 (the values Caffe
  documents), not for other values. The RNN's tanh is the TanH layer's.
- `debug_info` (the unrolled net's debug log) is accepted and ignored.
"""
from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..fillers import fill
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer

__all__ = ["RNN", "LSTM", "LSTMUnit", "lstm_unit", "caffe_sigmoid", "caffe_tanh"]


def caffe_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """lstm_unit_layer.cpp's sigmoid, 1 / (1 + exp(-x)), in double, rounded to x's dtype."""
    wide = x.to(torch.float64)
    return (1.0 / (1.0 + torch.exp(-wide))).to(x.dtype)


def caffe_tanh(x: torch.Tensor) -> torch.Tensor:
    """lstm_unit_layer.cpp's tanh, 2 sigmoid(2x) - 1, in double, rounded to x's dtype (near 0 it keeps
    Caffe's cancellation error, not torch.tanh's accuracy)."""
    wide = x.to(torch.float64)
    return (2.0 * (1.0 / (1.0 + torch.exp(-2.0 * wide))) - 1.0).to(x.dtype)


class _LSTMUnitFunction(torch.autograd.Function):
    """One LSTM step with Caffe's forward and Caffe's backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, c_prev, gates, cont):
        hdim = c_prev.shape[-1]
        i, f, o = caffe_sigmoid(gates[..., :3 * hdim]).split(hdim, dim=-1)
        g = caffe_tanh(gates[..., 3 * hdim:])
        k = cont.unsqueeze(-1)
        # Caffe: f = 0 where cont is 0 (not cont * sigmoid, which a NaN gate would keep NaN)
        f = torch.where(k == 0, torch.zeros_like(f), k * f)
        c = f * c_prev + i * g
        tanh_c = caffe_tanh(c)
        h = o * tanh_c
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dc, dh):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
        d_gates = torch.cat([dc_total * g * i * (1 - i),
                             dc_total * c_prev * f * (1 - f),
                             dh * tanh_c * o * (1 - o),
                             dc_total * i * (1 - g * g)], dim=-1)
        return dc_total * f, d_gates, None


def lstm_unit(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe's LSTMUnit: c_prev (..., H), gates (..., 4H) in the order i, f, o, g, cont (...) -> (c, h), each
    (..., H). cont gets no gradient."""
    return _LSTMUnitFunction.apply(c_prev, gates, cont.detach().to(gates.dtype))


def _refuse_cont_gradient(layer: Layer, param: pb.LayerParameter, index: int) -> None:
    """Caffe CHECKs in Backward that nothing asks for the gradient of the continuation indicators; a TRAIN
    net that asks explicitly is refused here, at set-up."""
    pd = param.propagate_down
    if layer.phase == pb.TRAIN and len(pd) > index and pd[index]:
        raise layer.error(f"cannot backpropagate to the sequence continuation indicators (bottom {index}, "
                          f"'{param.bottom[index] if len(param.bottom) > index else 'cont'}'): set "
                          f"propagate_down: false for it, as Caffe requires")


def _shape(s: Sequence[int]) -> list[int]:
    return [int(d) for d in s]


class _Recurrent(Layer):
    """What RNN and LSTM share: bottoms and tops, blobs and fills, the carried state, the loop's frame."""

    state_names: ClassVar[tuple[str, ...]] = ()   # Caffe's recurrent inputs, in bottom/top order
    gate_factor: ClassVar[int] = 1                # rows of the input transform per num_output
    input_blob_names: ClassVar[tuple[str, str, str]] = ("", "", "")  # x weight, its bias, static weight
    min_bottoms = 2
    min_tops = 1

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 1  # no diff to the sequence continuation indicators, as in Caffe

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        rp = param.recurrent_param
        self.num_output = int(rp.num_output)
        if self.num_output <= 0:
            raise self.error(f"recurrent_param.num_output must be positive, got {self.num_output}")
        self.expose_hidden = bool(rp.expose_hidden)
        exposed = len(self.state_names) if self.expose_hidden else 0
        fixed = 2 + exposed
        names = ", ".join(["x", "cont", "[static input]", *(f"{s}0" for s in self.state_names[:exposed])])
        if not fixed <= len(self.bottom_shapes) <= fixed + 1:
            raise self.error(f"takes {fixed} or {fixed + 1} bottoms with expose_hidden: "
                             f"{str(self.expose_hidden).lower()} ({names}), got {len(self.bottom_shapes)}")
        if len(param.top) != 1 + exposed:
            tops = ", ".join(["output", *(f"{s}_T" for s in self.state_names[:exposed])])
            raise self.error(f"takes {1 + exposed} top(s) with expose_hidden: {str(self.expose_hidden).lower()} "
                             f"({tops}), got {len(param.top)}")
        self.static_input = len(self.bottom_shapes) == fixed + 1
        xs = self.bottom_shapes[0]
        if len(xs) < 3:
            raise self.error(f"bottom 0 (x) must have at least 3 axes (T, N, features...), got shape {_shape(xs)}")
        self.T = xs[0]
        if self.T < 1:
            raise self.error(f"bottom 0 (x) must hold at least one timestep, got shape {_shape(xs)}")
        self.K = math.prod(xs[2:])
        self.K_static = 0
        if self.static_input:
            ss = self.bottom_shapes[2]
            if len(ss) < 2:
                raise self.error(f"bottom 2 (the static input) must have at least 2 axes (N, features...), got "
                                 f"shape {_shape(ss)}")
            self.K_static = math.prod(ss[1:])
        _refuse_cont_gradient(self, param, 1)
        self._check(self.bottom_shapes)
        self._make_blobs(rp)
        # Caffe's recurrent output buffers (used without expose_hidden): one (capacity, H) tensor per state
        self._carry: list[torch.Tensor] | None = None

    # -- shapes ----------------------------------------------------------------------------
    def _check(self, shapes: Sequence[Sequence[int]]) -> tuple[int, int]:
        """Caffe's LayerSetUp/Reshape checks on the bottoms' shapes; returns (T, N)."""
        if len(shapes) != len(self.bottom_shapes):
            raise self.error(f"was built for {len(self.bottom_shapes)} bottoms, got {len(shapes)}")
        xs, cs = shapes[0], shapes[1]
        if len(xs) < 3:
            raise self.error(f"bottom 0 (x) must have at least 3 axes (T, N, features...), got shape {_shape(xs)}")
        if xs[0] != self.T:
            raise self.error(f"the number of timesteps changed: the layer was built for T = {self.T}, bottom 0 "
                             f"(x) has shape {_shape(xs)}")
        T, N = int(xs[0]), int(xs[1])
        if math.prod(xs[2:]) != self.K:
            raise self.error(f"bottom 0 (x) has {math.prod(xs[2:])} features per timestep and stream (shape "
                             f"{_shape(xs)}), the weights expect {self.K}")
        if len(cs) != 2 or cs[0] != T or cs[1] != N:
            raise self.error(f"bottom 1 (cont) must have shape (T, N) = ({T}, {N}), got {_shape(cs)}")
        k = 2
        if self.static_input:
            ss = shapes[2]
            if len(ss) < 2 or ss[0] != N or math.prod(ss[1:]) != self.K_static:
                raise self.error(f"bottom 2 (the static input) must have shape (N = {N}, ...) with "
                                 f"{self.K_static} features, got {_shape(ss)}")
            k = 3
        if self.expose_hidden:
            for j, s in enumerate(self.state_names):
                hs = shapes[k + j]
                if _shape(hs) != [1, N, self.num_output]:
                    raise self.error(f"bottom {k + j} ({s}0) must have shape (1, N, num_output) = "
                                     f"[1, {N}, {self.num_output}], got {_shape(hs)}")
        return T, N

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        T, N = self._check(bottom_shapes)
        exposed = len(self.state_names) if self.expose_hidden else 0
        return [(T, N, self.num_output)] + [(1, N, self.num_output)] * exposed

    # -- blobs -----------------------------------------------------------------------------
    def _blob_specs(self, rp: pb.RecurrentParameter) -> tuple[list, list]:
        """(blobs made once, blobs of every timestep), each a list of (name, shape, filler) in Caffe's
        order; the first timestep's copies are the layer's blobs."""
        G, H = self.gate_factor * self.num_output, self.num_output
        x_name, b_name, static_name = self.input_blob_names
        once = [(x_name, (G, self.K), rp.weight_filler), (b_name, (G,), rp.bias_filler)]
        if self.static_input:
            once.append((static_name, (G, self.K_static), rp.weight_filler))
        return once, self._step_specs(rp, G, H)

    def _make_blobs(self, rp: pb.RecurrentParameter) -> None:
        where = f"layer '{self.name}': "
        once, per_step = self._blob_specs(rp)
        for name, shape, filler in once + per_step:
            self.add_blob(name, fill(self.new_empty(*shape, what=f"the {name} blob"), filler, self.ctx.generator,
                                     where))
        scratch: dict[tuple[int, ...], torch.Tensor] = {}
        for _ in range(1, self.T):
            for name, shape, filler in per_step:
                if filler.type == "constant":  # draws nothing
                    continue
                buf = scratch.setdefault(shape, torch.empty(shape, dtype=torch.float32))
                fill(buf, filler, self.ctx.generator, where)

    # -- carried state ---------------------------------------------------------------------
    def reset_state(self) -> None:
        """Caffe's RecurrentLayer::Reset: the next forward (without expose_hidden) starts from zeros."""
        if self._carry is not None:
            for buf in self._carry:
                buf.zero_()

    def _initial_state(self, N: int, like: torch.Tensor) -> list[torch.Tensor]:
        """The carried state for N streams: (N, H) per state."""
        H = self.num_output
        carry = self._carry
        if carry is None or carry[0].shape[0] < N:
            # Caffe's blob outgrows its memory: fresh zeros
            carry = [torch.zeros(max(N, self.bottom_shapes[0][1]), H, dtype=like.dtype, device=like.device)
                     for _ in self.state_names]
        else:
            carry = [b.to(dtype=like.dtype, device=like.device) for b in carry]
        self._carry = carry
        return [b[:N].clone() for b in carry]

    def _keep_state(self, finals: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for buf, s in zip(self._carry, finals):  # type: ignore[arg-type]
                buf[:s.shape[0]].copy_(s)

    def snapshot_state(self):
        if self._carry is None:
            return None
        return {s: b.detach().clone() for s, b in zip(self.state_names, self._carry)}

    def restore_state(self, state) -> None:
        if not isinstance(state, dict) or not all(s in state for s in self.state_names):
            self._carry = None  # a resumed Caffe run starts from zeros
            return
        self._carry = [torch.as_tensor(state[s]).to(dtype=self.ctx.dtype, device=self.ctx.device).clone()
                       for s in self.state_names]

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor):
        T, N = self._check([tuple(x.shape), tuple(cont.shape), *(tuple(r.shape) for r in rest)])
        H = self.num_output
        cont = cont.detach().to(x.dtype)
        x_name, b_name, static_name = self.input_blob_names
        # every timestep's input transform at once (Caffe's x_transform over T*N rows)
        xw = F.linear(x.reshape(T * N, self.K), getattr(self, x_name), getattr(self, b_name)).reshape(T, N, -1)
        sw = None
        if self.static_input:
            sw = F.linear(rest[0].reshape(N, self.K_static), getattr(self, static_name))
        if self.expose_hidden:
            # Caffe shares only the data of h0/c0 with its unrolled net: no gradient reaches them
            states = [s.detach().reshape(N, H) for s in rest[int(self.static_input):]]
        else:
            states = self._initial_state(N, x)
        out, finals = self._unroll(xw, sw, cont, states)
        finals = [s.detach() for s in finals]  # no gradient crosses batches nor reaches h_T/c_T tops (Caffe)
        if self.expose_hidden:
            return (out, *(s.reshape(1, N, H) for s in finals))
        self._keep_state(finals)
        return out

    def _unroll(self, xw: torch.Tensor, sw: torch.Tensor | None, cont: torch.Tensor,
                states: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The recurrence: xw (T, N, G) the input transforms, sw (N, G) the static one, cont (T, N), states
        (N, H) each -> (the output (T, N, H), the final states)."""
        raise NotImplementedError

    def _step_specs(self, rp: pb.RecurrentParameter, G: int, H: int) -> list:
        """The (name, shape, filler) of the blobs each timestep's layers hold, in Caffe's order."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, num_output={self.num_output}, T={self.T}, static_input={self.static_input}, "
                f"expose_hidden={self.expose_hidden}")


@register_layer("RNN")
class RNN(_Recurrent):
    """Caffe's RNN: h_t = tanh(W_hh cont_t h_{t-1} + W_xh x_t + b_h [+ W_xh_static x_static]),
    output o_t = tanh(W_ho h_t + b_o); blobs [W_xh, b_h, (W_xh_static), W_hh, W_ho, b_o]."""

    state_names = ("h",)
    gate_factor = 1
    max_bottoms = 4
    max_tops = 2
    input_blob_names = ("W_xh", "b_h", "W_xh_static")

    def _step_specs(self, rp, G, H):
        # timestep t's layers W_hh_h_{t-1} (W_hh) then W_ho_h_t (W_ho, b_o)
        return [("W_hh", (H, H), rp.weight_filler), ("W_ho", (H, H), rp.weight_filler), ("b_o", (H,), rp.bias_filler)]

    def _unroll(self, xw, sw, cont, states):
        h = states[0]
        hs = []
        for x_t, cont_t in zip(xw.unbind(0), cont.unbind(0)):  # by unbind, as LSTM's loop (why: there)
            pre = F.linear(cont_t.unsqueeze(1) * h, self.W_hh) + x_t  # Caffe's Eltwise sum, in its order
            if sw is not None:
                pre = pre + sw
            h = torch.tanh(pre)
            hs.append(h)
        # W_ho per timestep in Caffe; one product over the T*N rows computes the same sums
        o = torch.tanh(F.linear(torch.stack(hs), self.W_ho, self.b_o))
        return o, [h]


@register_layer("LSTM")
class LSTM(_Recurrent):
    """Caffe's LSTM (no peepholes): gates [i f o g] = W_hc cont_t h_{t-1} + W_xc x_t + b_c
    [+ W_xc_static x_static], then LSTMUnit; blobs [W_xc, b_c, (W_xc_static), W_hc]."""

    state_names = ("h", "c")
    gate_factor = 4
    max_bottoms = 5
    max_tops = 3
    input_blob_names = ("W_xc", "b_c", "W_xc_static")

    def _step_specs(self, rp, G, H):
        return [("W_hc", (G, H), rp.weight_filler)]  # timestep t's layer transform_t

    def _unroll(self, xw, sw, cont, states):
        h, c = states
        hs = []
        # The timesteps by unbind, not xw[t]: each indexing's backward would build a zero gradient of the whole
        # (T, N, 4H) input and add it (T^2 work: 73 % of a T = 28 LSTM step's time); unbind's stacks them once.
        for x_t, cont_t in zip(xw.unbind(0), cont.unbind(0)):
            gates = F.linear(cont_t.unsqueeze(1) * h, self.W_hc) + x_t
            if sw is not None:
                gates = gates + sw
            c, h = lstm_unit(c, gates, cont_t)
            hs.append(h)
        return torch.stack(hs), [h, c]


@register_layer("LSTMUnit")
class LSTMUnit(Layer):
    """Caffe's LSTMUnit, one LSTM step: bottoms c_prev (1, N, H), gates (1, N, 4H) in the order i, f, o, g,
    cont (1, N); tops c and h (1, N, H). No gradient to cont (module docstring)."""

    min_bottoms = max_bottoms = 3
    min_tops = max_tops = 2

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 2  # cont, as in Caffe

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        _refuse_cont_gradient(self, param, 2)
        self._check(self.bottom_shapes)

    def _check(self, shapes: Sequence[Sequence[int]]) -> None:
        names = ("c_prev", "gates", "cont")
        N = shapes[0][1] if len(shapes[0]) >= 2 else None
        for k, (s, name) in enumerate(zip(shapes, names)):
            want = "(1, N)" if k == 2 else "(1, N, 4H)" if k == 1 else "(1, N, H)"
            if len(s) != (2 if k == 2 else 3) or s[0] != 1 or s[1] != N:
                raise self.error(f"bottom {k} ({name}) must have shape {want} with the N of bottom 0 (c_prev), got "
                                 f"{_shape(s)}" + (f" and c_prev has shape {_shape(shapes[0])}" if k else ""))
        if shapes[1][2] != 4 * shapes[0][2]:
            raise self.error(f"bottom 1 (gates) must have 4 H = {4 * shapes[0][2]} values per stream (H = "
                             f"{shapes[0][2]} from c_prev), got shape {_shape(shapes[1])}")

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self._check(bottom_shapes)
        return [tuple(bottom_shapes[0])] * 2

    def forward(self, c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor):
        self._check([tuple(c_prev.shape), tuple(gates.shape), tuple(cont.shape)])
        return lstm_unit(c_prev, gates, cont)
