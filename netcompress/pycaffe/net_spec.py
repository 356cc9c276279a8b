"""pycaffe's net specification (`caffe.NetSpec`, `caffe.layers`, `caffe.params`, `caffe.to_proto`).

Nets written as Python expressions, as BVLC Caffe's python/caffe/net_spec.py defines them:

    from netcompress.pycaffe import layers as L, params as P
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source="train_lmdb", backend=P.Data.LMDB, batch_size=64, ntop=2,
                             transform_param=dict(scale=1. / 255))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    ...
    open("lenet.prototxt", "w").write(str(n.to_proto()))

Its rules: `L.<Type>(*bottoms, **fields)` makes a layer of that type; `ntop` (default 1) says how many tops
it has (0: the layer itself is returned, for a layer without tops), `in_place=True` makes its tops its
bottoms. A keyword that ends in `param` (`transform_param`, `param`, `convolution_param`, ...) is a field of
the LayerParameter; any other goes to the layer type's own parameter message (`Convolution` ->
`convolution_param`, found from the message names: `<Type>Parameter` is `<type>_param`), or, where that
message has no such field or the type has no message, to the LayerParameter (`include`, `loss_weight`,
`top`, ...). Values: a dict fills a message, a list a repeated field (a list of dicts a repeated message),
and a single value for a repeated field is a one-element list. Names: a top assigned to a NetSpec attribute
has that name, and a layer the name of its first top; any other top or top-less layer is named by its
type and a counter (`Convolution1`, ...). `to_proto` lists every layer the named tops need, each after its
bottoms' layers, in the order of the assignments. `P.<Type>.<CONSTANT>` is an enum value of
`<Type>Parameter` (`P.Pooling.MAX`).

The automatically generated names, as in BVLC's module, are not promised to stay the same.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from ..proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto", "param_name_dict", "assign_proto"]


def param_name_dict() -> dict[str, str]:
    """Layer type -> the stem of its parameter field: `<Type>Parameter` is held in `<stem>_param`."""
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields
    out = {}
    for f in fields:
        if f.name.endswith("_param") and f.message_type is not None and f.message_type.name.endswith("Parameter"):
            out[f.message_type.name[:-len("Parameter")]] = f.name[:-len("_param")]
    return out


def _fields(message) -> set[str]:
    return set(message.DESCRIPTOR.fields_by_name)


def assign_proto(proto, name: str, val: Any) -> None:
    """Set field `name` of the message `proto` from a Python value: a dict fills a message, a list a repeated
    field (a list of dicts a repeated message), a lone value of a repeated field becomes a one-element list."""
    if name not in _fields(proto):
        raise AttributeError(f"{proto.DESCRIPTOR.name} has no field '{name}'")
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(val, list):
        val = [val]
    if isinstance(val, list) and not repeated:
        raise TypeError(f"{proto.DESCRIPTOR.name}.{name} holds one value, not a list")
    if isinstance(val, list):
        if val and isinstance(val[0], dict):
            for item in val:
                sub = field.add()
                for k, v in item.items():
                    assign_proto(sub, k, v)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for k, v in val.items():
            assign_proto(field, k, v)
    else:
        setattr(proto, name, val)


class Top:
    """One output blob of a layer (`fn`, its `n`-th top)."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)


class Function:
    """A layer: its type, its bottoms (Tops of other layers) and its fields."""

    def __init__(self, type_name: str, inputs: tuple, params: dict):
        self.type_name = type_name
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(inp)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = int(self.params.pop("ntop", 1))
        self.in_place = bool(self.params.pop("in_place", False))
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _layer(self, bottoms: list[str], names: dict, autonames: Counter) -> caffe_pb2.LayerParameter:
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(t, names, autonames) for t in self.tops)
        layer.name = self._name(names, autonames)
        stem = _PARAM_NAMES.get(self.type_name)
        for k, v in self.params.items():
            # a field of the type's own message where it has one (as pycaffe tries it first), else LayerParameter's
            target, where = layer, ""
            if stem is not None and not k.endswith("param") and k in _fields(getattr(layer, stem + "_param")):
                target, where = getattr(layer, stem + "_param"), stem + "_param."
            elif k not in _fields(layer):
                owner = f"{stem}_param nor " if stem is not None else ""
                raise AttributeError(f"layer '{layer.name}' ({self.type_name}): no field '{k}' in {owner}"
                                     "LayerParameter")
            try:
                assign_proto(target, k, v)
            except (AttributeError, TypeError, ValueError) as e:
                raise type(e)(f"layer '{layer.name}' ({self.type_name}): {where}{k}={v!r}: {e}") from None
        return layer

    def _to_proto(self, layers: "OrderedDict[Function, caffe_pb2.LayerParameter]", names: dict,
                  autonames: Counter) -> None:
        """Add this layer after the layers of its bottoms (depth first, bottoms in order; no recursion, so a
        net of any depth works)."""
        stack: list[tuple[Function, int]] = [(self, 0)]
        while stack:
            fn, i = stack.pop()
            if fn in layers:
                continue
            if i < len(fn.inputs):
                stack.append((fn, i + 1))
                dep = fn.inputs[i].fn
                if dep not in layers:
                    stack.append((dep, 0))
                continue
            bottoms = [layers[inp.fn].top[inp.n] for inp in fn.inputs]
            layers[fn] = fn._layer(bottoms, names, autonames)


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute `tops` (their blobs named automatically)."""
    layers: "OrderedDict[Function, caffe_pb2.LayerParameter]" = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named tops (assigned as attributes or items); `to_proto` gives the net that computes them all."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named {name!r}") from None

    def __setitem__(self, key: str, value) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str):
        return self.tops[item]

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {v: k for k, v in self.tops.items()}
        autonames: Counter = Counter()
        layers: "OrderedDict[Function, caffe_pb2.LayerParameter]" = OrderedDict()
        for top in self.tops.values():
            fn = top if isinstance(top, Function) else top.fn
            fn._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`layers.<Type>(*bottoms, **fields)`: a layer of that type (its Top, its Tops, or with `ntop=0` the
    layer itself)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        return layer_fn


class Parameters:
    """`params.<Type>.<NAME>`: the enum value NAME of `<Type>Parameter` (e.g. `params.Pooling.MAX`)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter")

        class Param:
            def __getattr__(self, param_name: str):
                return getattr(message, param_name)
        return Param()


_PARAM_NAMES = param_name_dict()
layers = Layers()
params = Parameters()
