"""Registers the compression scripts as `netcompress <command>` (imported by netcompress.cli)."""
from __future__ import annotations

from ..cli import register_command
from . import MAINS

_HELP = {
    "dns_to_normal": "convert a raw DNS model to a normal model (dns_to_normal.py)",
    "inq_to_normal": "convert a raw INQ model to a normal model (inq_to_normal.py)",
    "model2INQ_raw": "convert a normal or raw DNS model to an INQ raw model (model2INQ_raw.py)",
    "parse_model": "write a binary caffemodel as protobuf text (parse_model.py)",
    "encode_compact": "encode a quantized model in the compact 4/4 format (encode_compact.py)",
    "decode_compact": "decode a compact 4/4 file into a normal caffemodel (decode_compact.py)",
    "encode_compact48": "encode a quantized model in the compact 4/8 format (encode_compact48.py)",
    "decode_compact48": "decode a compact 4/8 file into a normal caffemodel (decode_compact48.py)",
    "report": "kept counts, compression rate and stored sizes of a model",
    "rename_layers": "prefix every layer and blob of a net and its caffemodel (a KD teacher, e.g. t_)",
    "dump_logits": "write a net's blob (teacher logits) over a data source to HDF5 for HDF5Data",
}

for _name, _main in MAINS.items():
    register_command(_name, _main, _HELP[_name])
