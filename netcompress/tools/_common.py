"""What the conversion scripts share: argument checks, reading a model against its prototxt,
selecting layers by type and blob layout, and the reference's statistics block (section 5.1).

Layers are selected by their Caffe type and by how many blobs the model stores for them, never by
a substring of their name (Decision 7), so no layer is silently left at its initial values.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Callable, Sequence, TextIO

import numpy as np

from .. import io as ncio
from ..errors import FileError, NetcompressError
from ..proto import caffe_pb2 as pb

__all__ = [
    "ToolError", "CONV_TYPES", "IP_TYPES", "DNS_TYPES", "INQ_TYPES", "MASKED_TYPES",
    "PLAIN_WEIGHT_TYPES", "WEIGHT_TYPES", "ModelLayer", "SourceModel", "load_source_model",
    "require_files", "build_target_net", "net_error_text", "layer_block", "final_block", "KeptTotals", "run_main",
    "run_tool", "comma_ints", "comma_floats", "dims_arg", "MAX_GENERATED_UNITS", "NUM_MARK", "fmt_shape",
    "kind_of", "apply_mask", "print_lines",
    "layers_in_test_phase",
    "bias_term_of", "refuse_overwrite", "refuse_overwrites", "suspicious_values",
]

# Layer categories come from the layer registry (class attributes), never from lists of names
# here: CONV_TYPES, IP_TYPES, DNS_TYPES, INQ_TYPES, MASKED_TYPES, PLAIN_WEIGHT_TYPES and WEIGHT_TYPES
# are computed on first use (module __getattr__), so a newly registered masked type is selected too.
# "DNS" here means the pruning mask layout [W, b, W_mask, b_mask] that dns_to_normal converts: the
# DNS types and the plain masked types (MaskedConvolution, ...) alike.
_PRUNING_KINDS = ("dns", "masked")


def _category(name: str) -> frozenset[str]:
    from ..layers.base import layer_types_where

    preds = {
        "CONV_TYPES": lambda c: c.weight_param == "convolution_param",
        "IP_TYPES": lambda c: c.weight_param == "inner_product_param",
        "DNS_TYPES": lambda c: bool(c.weight_param) and c.mask_kind in _PRUNING_KINDS,
        "INQ_TYPES": lambda c: bool(c.weight_param) and c.mask_kind == "inq",
        "MASKED_TYPES": lambda c: bool(c.weight_param) and bool(c.mask_kind),
        "PLAIN_WEIGHT_TYPES": lambda c: bool(c.weight_param) and not c.mask_kind,
        "WEIGHT_TYPES": lambda c: bool(c.weight_param),
    }
    return layer_types_where(preds[name])


_CATEGORY_NAMES = ("CONV_TYPES", "IP_TYPES", "DNS_TYPES", "INQ_TYPES", "MASKED_TYPES", "PLAIN_WEIGHT_TYPES",
                   "WEIGHT_TYPES")


def _types(name: str) -> frozenset[str]:
    return _category(name)  # not cached: a type registered later (a test's, a plugin's) counts too


def __getattr__(name: str):
    if name in _CATEGORY_NAMES:
        return _types(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAX_GENERATED_UNITS = 10_000  # residual or dense units in a net the generators write (else hours of writing)
NUM_MARK = 55  # the reference's "number of decorative marks"


class ToolError(NetcompressError):
    """A conversion script cannot do what it was asked; the message names the file or layer."""


def fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------

def run_main(body: Callable[[list[str]], int], usage: str, argv: Sequence[str] | None,
             nargs: int | None) -> int:
    """Run a script body with the reference's conventions, on Python 3.

    `-h/--help` prints the usage (exit 0); a wrong argument count prints it on stderr (exit 2);
    errors go through the command line's boundary (`netcompress.boundary`) with the prefix
    `Error: `: a `NetcompressError` or an OS error prints one line (exit 1), a bug one line and the
    path of its saved traceback. The reference printed these on stdout and exited 0 after "does not
    exist" errors; a script in a pipeline needs a failure.
    """
    from ..boundary import guarded, pop_debug_flag, set_debug

    args, debug = pop_debug_flag(sys.argv[1:] if argv is None else argv)
    if debug:
        set_debug(True)
    if any(a in ("-h", "--help") for a in args):
        print(usage)
        return 0
    if nargs is not None and len(args) != nargs:
        print(usage, file=sys.stderr)
        print(f"Error: expected {nargs} arguments, got {len(args)}", file=sys.stderr)
        return 2
    return guarded(lambda: body(args), os.path.basename(sys.argv[0] or "script"), "Error: ")


def comma_ints(text: str, what: str) -> list[int]:
    """The comma-separated integers `text` of option `what` (empty parts skipped), or a ToolError naming it."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ToolError(f"{what}: expected comma-separated integers, got '{text}'") from None


def comma_floats(text: str, what: str) -> list[float]:
    """The comma-separated finite numbers `text` of option `what` (empty parts skipped), or a ToolError naming it."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = None
    if values is None or not all(math.isfinite(v) for v in values):
        raise ToolError(f"{what}: expected comma-separated finite numbers, got '{text}'")
    return values


def dims_arg(example: str, count: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """An argparse `type` for comma-separated positive sizes such as an input's C,H,W (`count` of them, when
    given); the error names the form with `example`."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            v = tuple(int(t) for t in text.split(","))
        except ValueError:
            v = None
        if v is None or (count is not None and len(v) != count):
            raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. {example}), got '{text}'")
        if not v or min(v) < 1:
            raise argparse.ArgumentTypeError(f"expected positive C,H,W, got '{text}'")
        return v
    return parse


def run_tool(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
             body: Callable[[argparse.Namespace], int | None],
             errors: tuple[type[Exception], ...] = (NetcompressError, OSError)) -> int:
    """Parse `argv` (None: `sys.argv[1:]`) with `parser` and run `body(args)`, with the recipe tools'
    conventions: --help and usage errors return argparse's exit code (0 / 2) instead of raising
    SystemExit (tests call main() in process); one of `errors` (default a NetcompressError or an
    OSError) prints one `Error: <message>` line on stderr (after flushing stdout) and returns 1;
    otherwise body's return value (None counts as 0). A SystemExit from the body is not caught."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return int(body(args) or 0)
    except errors as e:
        sys.stdout.flush()
        print(f"Error: {e}", file=sys.stderr)
        return 1


def refuse_overwrite(output: str, *, writes: str | None = None, **inputs: str) -> None:
    """A `ToolError` when `output` is one of the input files (by name, hard link or symlink): the
    tools read their inputs fully, so writing would silently replace the input by the result
    (`parse_model X X` would turn the binary model into its text dump). With `writes` (what the tool
    writes there: weights, a dump, a compact file), also when `output` is a net or solver definition
    (`refuse_replacing_a_definition`)."""
    for what, path in inputs.items():
        if os.path.exists(output) and _same_file(output, path):
            raise ToolError(f"{output} is also the {what.replace('_', ' ')} ({path}): writing the output there "
                            "would destroy the input; give another output file")
    if writes:
        refuse_replacing_a_definition(output, writes)


def refuse_overwrites(outputs: Sequence[str | None], *, writes: Sequence[str | None] = (),
                      **inputs: str | None) -> None:
    """`refuse_overwrite` for each of `outputs` (with the `writes` of the same position) against every input
    given (None: not given); and a `ToolError` when two outputs are one file (`rename_layers ... out out` wrote the
    net, then the caffemodel over it)."""
    named = [(i, o) for i, o in enumerate(outputs) if o]
    for k, (i, a) in enumerate(named):
        for j, b in named[k + 1:]:
            if _same_file(a, b):
                what = (f" ({writes[i]} and {writes[j]})" if max(i, j) < len(writes) and writes[i] and writes[j]
                        else "")
                raise ToolError(f"{b} is given for two outputs{what}: the second would replace the first; give each "
                                "its own file")
    given = {k: v for k, v in inputs.items() if v}
    for i, output in enumerate(outputs):
        if output:
            refuse_overwrite(output, writes=writes[i] if i < len(writes) else None, **given)


def _same_file(a: str, b: str) -> bool:
    """Whether paths `a` and `b` name one file: the same path, or existing files that are one (a hard link or
    symlink)."""
    try:
        return os.path.abspath(a) == os.path.abspath(b) or (os.path.exists(a) and os.path.exists(b)
                                                           and os.path.samefile(a, b))
    except (OSError, ValueError):
        return False


def numbered_inputs(what: str, paths: Sequence[str]) -> dict[str, str]:
    """`refuse_overwrites`'s inputs for a list of files: {what: path} for one, {"what 1": ..., "what 2": ...}."""
    return {what if len(paths) == 1 else f"{what} {i + 1}": path for i, path in enumerate(paths)}


def refuse_replacing_a_definition(output: str, writes: str) -> None:
    """A `ToolError` when the existing file `output` is a net or solver prototxt somebody wrote (a net whose
    layers hold no weights) and the tool would write `writes` (weights, a dump) over it: such an output is an
    argument out of order (`parse_model model.caffemodel net.prototxt` replaced the net by the model's text
    dump). An earlier output of the tool (a model, a dump with weights) is replaced as before."""
    try:
        if not os.path.isfile(output) or os.path.getsize(output) > ncio.DEFINITION_MAX_BYTES:
            return
        with open(output, "rb") as f:
            kind = ncio.definition_kind(f.read())
    except (OSError, ValueError):
        return
    if kind:
        raise ToolError(f"{output} is {kind}, which writing {writes} there would replace (are the arguments in "
                        "order?); give another output file, or remove it first if that is meant")


def require_files(*paths: str) -> None:
    """The reference's existence checks, as errors (`<path> does not exist!`), then netcompress's:
    a regular file (not a folder, FIFO or device), reachable (no symlink loop, no name too long)."""
    for p in paths:
        if "\0" in p:
            raise ToolError(f"{p!r}: a file name cannot contain a NUL byte")
        try:
            os.lstat(p)
        except FileNotFoundError:
            raise ToolError(f"{p} does not exist!") from None
        except OSError as e:
            raise FileError.from_os_error(p, e, "read") from None
        if os.path.isdir(p):
            raise ToolError(f"{p} is a directory, expected a file")
        try:
            os.stat(p)
        except FileNotFoundError:
            raise ToolError(f"{p} does not exist! (a symbolic link to a missing file)") from None
        except OSError:
            pass  # a symlink loop: named below
        ncio.check_input_file(p)


# ----------------------------------------------------------------------------------------------
# Source models: the TEST-phase layers of a prototxt with the blobs a .caffemodel stores for them
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ModelLayer:
    """One layer of a source model that stores blobs.

    `kind` is "dns" (DNS/C* and plain masked types), "inq" (INQ types), "quant" (QuantConvolution /
    QuantInnerProduct) or "plain" (every other type).
    `has_masks` is true when the model stores the masks ([W, b, W_mask, b_mask] or [W, W_mask]);
    a masked type with only [W, b] / [W] stored is a normal model loaded into a masked net. A Quant
    layer's raw model stores the per-channel scales after the masks ([W, (b), W_mask, (b_mask), w_alpha]).
    """

    name: str
    type: str
    blobs: list[np.ndarray]
    legacy: list[bool]  # the blob has no `shape` field (num/channels/height/width only)
    kind: str
    bias_term: bool | None  # None for non-weight types
    has_masks: bool = False
    bitwidth: int | None = None   # a Quant layer's weight_quant_param.bitwidth
    transposed_ip: bool = False   # an InnerProduct with `transpose` stores W as [K, N]

    @property
    def is_weight_layer(self) -> bool:
        return self.type in _types("WEIGHT_TYPES")

    @property
    def weight(self) -> np.ndarray:
        return self.blobs[0]

    @property
    def bias(self) -> np.ndarray | None:
        return self.blobs[1] if self.bias_term else None

    @property
    def weight_mask(self) -> np.ndarray | None:
        if not self.has_masks:
            return None
        return self.blobs[2] if self.bias_term else self.blobs[1]

    @property
    def bias_mask(self) -> np.ndarray | None:
        return self.blobs[3] if (self.has_masks and self.bias_term) else None

    @property
    def w_alpha(self) -> np.ndarray | None:
        """A Quant layer's stored per-output-channel scales, or None."""
        if self.kind != "quant" or not self.has_masks:
            return None
        n = 4 if self.bias_term else 2
        return self.blobs[n] if len(self.blobs) > n else None

    def effective(self) -> tuple[np.ndarray, np.ndarray | None]:
        """W and b as the net computes with them: DNS and Quant masks applied (entries with mask != 1
        are 0), a Quant layer's weights quantized with its stored scales (α_c·clamp(round(v/α_c)),
        recipes-spec 4.6); INQ and plain layers as stored (an INQ mask marks quantized entries, not
        pruned ones)."""
        w, b = self.weight, self.bias
        if self.kind in ("dns", "quant") and self.has_masks:
            w = apply_mask(w, self.weight_mask)
            b = apply_mask(b, self.bias_mask) if b is not None else None
        alpha = self.w_alpha
        if alpha is not None:
            codes = self.codes
            rows = codes.reshape(alpha.size, -1) if not self.transposed_ip else codes.reshape(-1, alpha.size).T
            wq = rows * alpha.astype(np.float32)[:, None]
            w = (wq if not self.transposed_ip else wq.T).reshape(np.shape(w)).astype(np.float32)
        return w, b

    @property
    def codes(self) -> np.ndarray:
        """A Quant layer's integer codes clamp(round((W⊙M)/α_c), −2^(b−1), 2^(b−1) − 1) (0 where α_c = 0),
        shaped like W."""
        alpha = self.w_alpha
        if alpha is None or self.bitwidth is None:
            raise ToolError(f"layer '{self.name}' stores no per-channel scales (w_alpha)")
        w = apply_mask(self.weight, self.weight_mask)
        rows = w.reshape(alpha.size, -1) if not self.transposed_ip else w.reshape(-1, alpha.size).T
        a = alpha.astype(np.float32)[:, None]
        clip = 2 ** (self.bitwidth - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(a != 0, np.clip(np.rint(rows / np.where(a != 0, a, 1)), -clip, clip - 1), 0)
        q = q.astype(np.float32)
        return (q if not self.transposed_ip else q.T).reshape(np.shape(self.weight))


def apply_mask(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 `values` where `mask == 1`, else 0 (section 5.1: any mask value other than 1 prunes)."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    m = np.asarray(mask).reshape(-1)
    out = np.zeros(v.size, dtype=np.float32)
    keep = m == 1
    out[keep] = v[keep]
    return out.reshape(np.shape(values))


@dataclasses.dataclass
class SourceModel:
    prototxt: str
    model: str
    layers: list[ModelLayer]
    # prototxt layers of a weight type for which the model stores nothing
    missing: list[tuple[str, str]]

    def layer(self, name: str) -> ModelLayer | None:
        for l in self.layers:
            if l.name == name:
                return l
        return None


def _test_state(param: pb.NetParameter) -> pb.NetState:
    # The scripts build their nets in TEST phase (pycaffe `caffe.TEST`); the prototxt's own
    # state supplies level and stages, as Net does.
    state = pb.NetState(phase=pb.TEST)
    if param.HasField("state"):
        merged = pb.NetState()
        merged.CopyFrom(param.state)
        merged.MergeFrom(state)
        merged.phase = pb.TEST
        state = merged
    return state


def layers_in_test_phase(prototxt: str) -> list[pb.LayerParameter]:
    """The layers of `prototxt` in the TEST-phase net, in order."""
    from ..net import filter_net

    param = ncio.read_net(prototxt)
    return list(filter_net(param, _test_state(param), verbose=False).layer)


def bias_term_of(lp: pb.LayerParameter) -> bool | None:
    """bias_term of a weight layer (read from the message its class names), None for other types."""
    from ..layers.base import registered_class

    cls = registered_class(lp.type)
    if cls is None or not cls.weight_param:
        return None
    return bool(getattr(lp, cls.weight_param).bias_term)


def kind_of(type_name: str) -> str:
    """"dns" (pruning masks: DNS and plain masked types), "inq", "quant" or "plain"."""
    from ..layers.base import registered_class

    cls = registered_class(type_name)
    kind = cls.mask_kind if cls is not None else ""
    if kind in _PRUNING_KINDS:
        return "dns"
    return kind if kind in ("inq", "quant") else "plain"


def _check_same_count(layer: str, model: str, a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    if a.size != b.size:
        raise ToolError(f"{model}: layer '{layer}': {what_b} has shape {fmt_shape(b.shape)} but "
                        f"{what_a} has shape {fmt_shape(a.shape)}; a mask must match its blob")


def load_source_model(prototxt: str, model: str) -> SourceModel:
    """Read `model` against the TEST-phase layers of `prototxt` (by layer name, as Caffe copies).

    The prototxt gives each layer's type and bias_term; the model gives the blobs. Model layers
    the prototxt lacks are ignored (Caffe's rule). No net is built, so no data is needed.
    """
    layers_pt = layers_in_test_phase(prototxt)
    mp = ncio.read_caffemodel(model)
    stored: dict[str, pb.LayerParameter] = {}
    for l in mp.layer:
        stored[l.name] = l  # later duplicates win, as Caffe's successive copies do
    out: list[ModelLayer] = []
    missing: list[tuple[str, str]] = []
    for lp in layers_pt:
        sl = stored.get(lp.name)
        if sl is None or len(sl.blobs) == 0:
            if lp.type in _types("WEIGHT_TYPES"):
                missing.append((lp.name, lp.type))
            continue
        try:
            blobs = [ncio.blob_to_array(b) for b in sl.blobs]
        except ValueError as e:
            raise ToolError(f"{model}: layer '{lp.name}': {e}") from None
        legacy = [not b.HasField("shape") for b in sl.blobs]
        bias = bias_term_of(lp)
        kind = kind_of(lp.type)
        ml = ModelLayer(lp.name, lp.type, blobs, legacy, kind, bias)
        n = len(blobs)
        if lp.type in _types("WEIGHT_TYPES"):
            plain_n = 2 if bias else 1
            layout = "[W, b]" if bias else "[W] (bias_term: false)"
            ml.transposed_ip = lp.type in _types("IP_TYPES") and bool(lp.inner_product_param.transpose)
            if kind == "quant":
                ml.bitwidth = int(lp.weight_quant_param.bitwidth)
            if kind != "plain":
                masked_n = 4 if bias else 2
                masked_layout = "[W, b, W_mask, b_mask]" if bias else "[W, W_mask] (bias_term: false)"
                accepted = [masked_n]
                expected = f"{masked_n} {masked_layout}"
                if kind == "quant":
                    # the scales follow the masks; a model without them gets scales fitted when loaded
                    accepted.append(masked_n + 1)
                    quant_layout = "[W, b, W_mask, b_mask, w_alpha]" if bias else "[W, W_mask, w_alpha]"
                    expected = f"{masked_n + 1} {quant_layout} (or {masked_n} without w_alpha)"
                if n in accepted:
                    ml.has_masks = True
                    _check_same_count(lp.name, model, ml.weight, ml.weight_mask, "W", "W_mask")
                    if bias:
                        _check_same_count(lp.name, model, ml.bias, ml.bias_mask, "b", "b_mask")
                    alpha = ml.w_alpha
                    if alpha is not None:
                        rows = ml.weight.shape[1] if ml.transposed_ip else ml.weight.shape[0]
                        if alpha.size != rows:
                            raise ToolError(f"{model}: layer '{lp.name}' ({lp.type}): w_alpha has {alpha.size} "
                                            f"values for {rows} output channels")
                elif n != plain_n:
                    raise ToolError(
                        f"{model}: layer '{lp.name}' ({lp.type} in {prototxt}) stores {n} blob(s); expected "
                        f"{expected} for a raw model or {plain_n} {layout} for a normal one")
            elif n != plain_n:
                hint = (" (is it a raw DNS/INQ model? Then give the DNS/INQ prototxt it was trained with)"
                        if n == 2 * plain_n else "")
                raise ToolError(f"{model}: layer '{lp.name}' ({lp.type} in {prototxt}) stores {n} blob(s); "
                                f"expected {plain_n} {layout}{hint}")
        out.append(ml)
        _warn_values(model, ml)
    return SourceModel(prototxt, model, out, missing)


def suspicious_values(l: ModelLayer) -> list[str]:
    """What is wrong with a source layer's values: blobs holding NaN or infinite values, masks holding
    values other than 0 and 1 (one phrase each; empty when all is well)."""
    found = []
    names = ["W", "b"] if l.bias_term else ["W"]
    for j, a in enumerate(l.blobs[:len(names)] if l.is_weight_layer else l.blobs):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            what = names[j] if l.is_weight_layer else f"blob {j}"
            found.append(f"{what} holds {bad} NaN or infinite value(s)")
    for what, m in (("W_mask", l.weight_mask), ("b_mask", l.bias_mask)):
        if m is not None:
            bad = int(np.count_nonzero((m != 0) & (m != 1)))
            if bad:
                found.append(f"{what} holds {bad} value(s) other than 0 and 1")
    return found


def _warn_values(model: str, l: ModelLayer) -> None:
    # A warning, not an error: the conversions stay faithful (dns_to_normal keeps an entry only where
    # its mask is exactly 1, as the reference did); what cannot be done with such values refuses them
    # itself (encode_compact, model2INQ_raw).
    for what in suspicious_values(l):
        sys.stdout.flush()
        print(f"Warning: {model}: layer '{l.name}': {what}", file=sys.stderr)


def net_error_text(e: Exception, source: str) -> str:
    """The message of `e`, raised by a Net built with the name `source`, without the `source: ` it starts
    with: for a caller whose own message names `source` already."""
    msg = str(e)
    return msg[len(source) + 2:] if msg.startswith(f"{source}: ") else msg


def build_target_net(prototxt: str):
    """The target net in TEST phase with its filler values (pycaffe `caffe.Net(prototxt, TEST)`)."""
    from ..net import Net

    try:
        return Net(prototxt, phase=pb.TEST, verbose=False)
    except NetcompressError as e:
        raise ToolError(f"cannot build the net of {prototxt} (TEST phase, as pycaffe did; data layers "
                        f"open their sources): {net_error_text(e, prototxt)}") from None


# ----------------------------------------------------------------------------------------------
# The reference's statistics block (section 5.1)
# ----------------------------------------------------------------------------------------------

def _pct(k: int, n: int) -> float:
    # numpy's float32 division in the reference gives nan for an empty blob.
    return 100.0 * k / n if n else float("nan")


def layer_block(name: str, w_kept: int, w_count: int, b_kept: int | None, b_count: int | None) -> list[str]:
    """The per-layer lines of dns_to_normal.py / model2INQ_raw.py.

    Counts are exact integers (the reference summed float32 masks, identical below 2^24 per layer).
    A layer without bias has no `b:` line (the reference crashed on such layers).
    """
    sp = " " * len(name)
    lines = ["=" * NUM_MARK, "%s layer w: %d/%d (%f %%) kept" % (name, w_kept, w_count, _pct(w_kept, w_count))]
    tk, tn = w_kept, w_count
    if b_count is not None:
        lines.append("%s       b: %d/%d (%f %%) kept" % (sp, b_kept, b_count, _pct(b_kept, b_count)))
        tk, tn = tk + b_kept, tn + b_count
    lines.append("%s   total: %d/%d (%f %%) kept" % (sp, tk, tn, _pct(tk, tn)))
    return lines


@dataclasses.dataclass
class KeptTotals:
    total: int = 0
    kept: int = 0

    def add(self, w_kept: int, w_count: int, b_kept: int | None, b_count: int | None) -> None:
        self.total += w_count + (b_count or 0)
        self.kept += w_kept + (b_kept or 0)

    @property
    def percent(self) -> float:
        return _pct(self.kept, self.total)

    @property
    def rate(self) -> float:
        return self.total / self.kept if self.kept else float("inf")


def final_block(totals: KeptTotals) -> list[str]:
    """`Final Statistics` and `Compression Rate`, printed only if something was counted and kept."""
    if totals.total == 0 or totals.kept == 0:
        return []
    return [" ", "*" * NUM_MARK, " ",
            "Final Statistics: %d/ %d (%f %%) kept" % (totals.kept, totals.total, totals.percent),
            "Compression Rate: %f" % totals.rate,
            " ", "*" * NUM_MARK]


def print_lines(lines: Sequence[str], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    for line in lines:
        print(line, file=out)
