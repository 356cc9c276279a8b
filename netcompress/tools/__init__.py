"""The reference fork's compression_scripts on Python 3 (reference-semantics section 5).

- `convert`: dns_to_normal, inq_to_normal, model2INQ_raw, parse_model (5.1-5.4);
- `compact`: the compact 4/4 and 4/8 formats, byte-exact, and their encoders/decoders (5.7, 5.8);
- `report`: kept counts, compression rate, on-disk sizes and bit budgets of a model;
- `sdn`: Shallow-Deep nets: make_sdn_net (ICs, SDNLoss, growth stages) and sdn_early_exit;
- `micronet`: the MicroNet score of an integer deploy net and `import_pth` (recipes-spec 4.12, 5.5);
- `densenet`: `make_densenet`, the MicroNet DenseNet-BC prototxts (recipes-spec 4.2);
- `micronet_merge`: a quantized student into MicroNet's integer deploy net (recipes-spec 4.9);
- `bn_reestimate`: BatchNorm statistics re-estimated by TRAIN-phase forwards (recipes-spec 4.7);
- `net2net`: Net2Net wider/deeper surgery, random mutation and a small mutation search (recipes-spec 1);
- `kd`: rename_layers and dump_logits, for knowledge distillation (recipes-spec 5.5).

Each script is `netcompress <name> ...` (an entry of `netcompress.commands.COMMANDS`) and
`compression_scripts/<name>.py ...`, with the reference's
positional arguments and printed lines. Layers are selected by type and blob layout (Decision 7).
"""
from __future__ import annotations

from .compact import (decode_compact, decode_compact48_main, decode_compact_main, encode_compact,
                      encode_compact48_main, encode_compact_main)
from .convert import (dns_to_normal, dns_to_normal_main, inq_to_normal, inq_to_normal_main,
                      model2INQ_raw_main, model2inq_raw, parse_model, parse_model_main)
from .report import main as report_main
from .report import model_report

__all__ = ["dns_to_normal", "inq_to_normal", "model2inq_raw", "parse_model", "encode_compact",
           "decode_compact", "model_report"]
