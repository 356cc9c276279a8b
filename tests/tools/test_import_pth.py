"""`import_pth` (recipes-spec 5.5): PyTorch state dicts built and saved here, turned into
caffemodels for make_densenet's deploy prototxt by the micronet-densenet-final map."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress import io as ncio
from netcompress.commands import load_command
from netcompress.tools._common import ToolError
from netcompress.tools.densenet import DenseNetConfig, densenet_net
from netcompress.tools.micronet import import_pth, import_pth_main, micronet_score

CFG = DenseNetConfig(depth=10, growth=4, num_classes=10, input_shape=(3, 16, 16))


def merged_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The names and shapes of the source's densenet_merged for CFG (Scale tensors (1, C, 1)),
    written out here from its module structure."""
    g = torch.Generator().manual_seed(seed)
    k, w0 = CFG.growth, 2 * CFG.growth
    sd: dict[str, torch.Tensor] = {}

    def scale(name: str, c: int) -> None:
        sd[f"{name}.weight"] = torch.rand(1, c, 1, generator=g) + 0.5
        sd[f"{name}.bias"] = torch.rand(1, c, 1, generator=g) - 0.5

    def conv(name: str, cout: int, cin: int, ks: int) -> None:
        sd[f"{name}.weight"] = torch.randint(-8, 8, (cout, cin, ks, ks), generator=g).float()

    conv("conv1", w0, 3, 3)
    scale("scale1", w0)
    c = w0
    for b in (1, 2, 3):
        # one bottleneck per block at depth 10
        p = f"dense{b}.0"
        scale(f"{p}.scale1", c)
        conv(f"{p}.conv1", 4 * k, c, 1)
        scale(f"{p}.scale2", 4 * k)
        conv(f"{p}.conv2", k, 4 * k, 3)
        scale(f"{p}.scale3", k)
        c += k
        if b < 3:
            scale(f"trans{b}.scale1", c)
            conv(f"trans{b}.conv1", c // 2, c, 1)
            scale(f"trans{b}.scale2", c // 2)
            c //= 2
    scale("scale2", c)
    sd["fc.weight"] = torch.randint(-32, 32, (CFG.num_classes, c), generator=g).float()
    scale("scale3", CFG.num_classes)
    return sd


def layer_of(key: str) -> str:
    """dense1.0.scale1.weight -> dense1.0_scale1 (the map's rule, spelled out here)."""
    parts = key.split(".")[:-1]
    return parts[0] if len(parts) == 1 else ".".join(parts[:-1]) + "_" + parts[-1]


@pytest.fixture
def deploy(tmp_path):
    p = tmp_path / "deploy.prototxt"
    p.write_text(text_format.MessageToString(densenet_net(CFG, "deploy")))
    return str(p)


def stored_blobs(path: str) -> dict[str, list[np.ndarray]]:
    return {l.name: [ncio.blob_to_array(b) for b in l.blobs] for l in ncio.read_caffemodel(path).layer}


def check_model(path: str, sd: dict[str, torch.Tensor]) -> None:
    blobs = stored_blobs(path)
    for key, t in sd.items():
        layer, leaf = layer_of(key), key.rsplit(".", 1)[1]
        got = blobs[layer][0 if leaf == "weight" else 1]
        want = t.numpy()
        if layer.startswith("scale") or "_scale" in layer:
            want = want.reshape(-1)  # (1, C, 1) -> (C)
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got, want)
    assert sum(len(v) for v in blobs.values()) == len(sd)


def test_wrapped_state_dict_with_scale_tensors_1_c_1(deploy, tmp_path):
    sd = merged_state_dict()
    torch.save({"state_dict": sd, "epoch": 300}, tmp_path / "densenet.pth.tar")
    lines = import_pth(str(tmp_path / "densenet.pth.tar"), deploy, str(tmp_path / "m.caffemodel"),
                       "micronet-densenet-final")
    check_model(str(tmp_path / "m.caffemodel"), sd)
    assert lines[-1].startswith(f"Imported {len(sd)} tensors")
    assert any(l.startswith("dense1.0_scale1 (Scale) blob 0 [8] <- dense1.0.scale1.weight [1, 8, 1]") for l in lines)
    # the layers keep the prototxt's definitions, so the caffemodel is a full Caffe net
    model = ncio.read_caffemodel(str(tmp_path / "m.caffemodel"))
    net = ncio.read_net(deploy)
    assert [l.name for l in model.layer] == [l.name for l in net.layer]
    assert [l.type for l in model.layer] == [l.type for l in net.layer]


def test_bare_state_dict_with_a_dataparallel_prefix(deploy, tmp_path):
    sd = merged_state_dict(1)
    sd = {k: v.reshape(-1) if v.dim() == 3 else v for k, v in sd.items()}  # densenet_final's (C) scales
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "sd.pth")
    import_pth(str(tmp_path / "sd.pth"), deploy, str(tmp_path / "m.caffemodel"))
    check_model(str(tmp_path / "m.caffemodel"), sd)


def test_a_list_of_tensors_fills_the_blobs_in_order(deploy, tmp_path):
    sd = merged_state_dict(2)
    # the source's merge script saves its parameters as a list, in the net's parameter order,
    # which the deploy prototxt's layer order follows
    torch.save(list(sd.values()), tmp_path / "list.pth")
    import_pth(str(tmp_path / "list.pth"), deploy, str(tmp_path / "m.caffemodel"))
    check_model(str(tmp_path / "m.caffemodel"), sd)


def test_imported_model_scores(deploy, tmp_path):
    sd = merged_state_dict(3)
    torch.save(sd, tmp_path / "sd.pth")
    import_pth(str(tmp_path / "sd.pth"), deploy, str(tmp_path / "m.caffemodel"))
    r = micronet_score(deploy, str(tmp_path / "m.caffemodel"))
    # every bias here is random (non-zero): each Scale counts 1 parameter (faithful)
    n_scales = sum(1 for k in sd if "scale" in layer_of(k) and k.endswith(".weight"))
    assert r.by_kind()["Scale"][1] == n_scales * 1.0
    conv_w = [v for k, v in sd.items() if "conv" in k]
    nnz = sum(int(torch.count_nonzero(v)) for v in conv_w)
    assert r.by_kind()["Conv"][1] == (sum(v.numel() for v in conv_w) + 4 * nnz) / 32


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.pop("dense2.0.conv2.weight"),
     r"no tensor for 'dense2\.0\.conv2\.weight' \(layer 'dense2\.0_conv2' blob 0\)"),
    (lambda sd: sd.__setitem__("dense9.0.conv1.weight", torch.zeros(1)),
     r"'dense9\.0\.conv1\.weight' maps to layer 'dense9\.0_conv1', which"),
    (lambda sd: sd.__setitem__("fc.bias", torch.zeros(10)),
     r"'fc\.bias' maps to blob 1 of layer 'fc' \(InnerProduct\), which has 1 blob\(s\) \(bias_term: false\)"),
    (lambda sd: sd.__setitem__("conv1.weight", torch.zeros(8, 3, 1, 1)),
     r"'conv1\.weight' has shape \[8, 3, 1, 1\]; layer 'conv1' \(Convolution\) blob 0 is \[8, 3, 3, 3\]"),
    (lambda sd: sd.__setitem__("dense1.0.bn1.running_mean", torch.zeros(8)), "neither"),
])
def test_mismatches_are_named(deploy, tmp_path, edit, match):
    sd = merged_state_dict()
    edit(sd)
    torch.save(sd, tmp_path / "sd.pth")
    with pytest.raises(ToolError, match=match):
        import_pth(str(tmp_path / "sd.pth"), deploy, str(tmp_path / "m.caffemodel"))
    assert not (tmp_path / "m.caffemodel").exists()


class _Payload:
    """Unpickling this would create a file: weights_only loading must refuse it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_no_pickled_code_runs(deploy, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Payload(str(marker))}, tmp_path / "evil.pth")
    assert not marker.exists()  # pickling only records the call
    with pytest.raises(ToolError, match="weights_only=True"):
        import_pth(str(tmp_path / "evil.pth"), deploy, str(tmp_path / "m.caffemodel"))
    assert not marker.exists()


def test_command(deploy, tmp_path, capsys):
    sd = merged_state_dict()
    torch.save(sd, tmp_path / "sd.pth")
    assert load_command("import_pth") is import_pth_main
    out = tmp_path / "m.caffemodel"
    assert import_pth_main([str(tmp_path / "sd.pth"), deploy, str(out), "--map", "micronet-densenet-final", "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"Imported {len(sd)} tensors")
    check_model(str(out), sd)
    assert import_pth_main([str(tmp_path / "sd.pth"), deploy, str(out)]) == 2  # --map is required
    assert import_pth_main([str(tmp_path / "nope.pth"), deploy, str(out), "--map", "micronet-densenet-final"]) == 1
    assert "nope.pth does not exist" in capsys.readouterr().err
