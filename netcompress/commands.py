"""The one table of `netcompress <command>`s: Caffe's tool verbs, the conversion and recipe scripts,
and the pipelines.

Each entry names the module and the `main(argv) -> int` that runs the command, so `netcompress
--help` imports nothing, and adding a command is one line here (plus, for a reference script, its
shim in `compression_scripts/`). Entry points follow one convention: `main(argv: list[str] | None)
-> int`, testable in process.
"""
from __future__ import annotations

import importlib
from typing import Callable, NamedTuple, Sequence

__all__ = ["Command", "COMMANDS", "SECTIONS", "load_command"]


class Command(NamedTuple):
    target: str   # "package.module:function"
    help: str
    # Whether the command runs nets: the CPU threads and the allocator are set up (and logged) first. Tools that
    # only read or write files (logs, prototxts) skip that.
    computes: bool = True


COMMANDS: dict[str, Command] = {
    # Caffe's tool verbs
    "train": Command("netcompress.solvers.cli:train_main", "train a model from a solver prototxt (caffe train)"),
    "test": Command("netcompress.solvers.cli:test_main", "score a model on its TEST data (caffe test)"),
    "time": Command("netcompress.timing:main", "benchmark a net layer by layer (caffe time)"),
    "device_query": Command("netcompress.device:device_query_main",
                            "show the properties of GPUs (caffe device_query --gpu 0)", computes=False),
    "plot": Command("netcompress.solvers.cli:plot_main", "plot training logs as PNG curves", computes=False),
    "upgrade": Command("netcompress.upgrade:main", "upgrade legacy net/solver/caffemodel files", computes=False),
    "parse_log": Command("netcompress.tools.logs:parse_log_main",
                         "a training log's train and test outputs as CSV tables (Caffe's tools/extra/parse_log.py)",
                         computes=False),
    "plot_training_log": Command("netcompress.tools.logs:plot_training_log_main",
                                 "one chart type (0-7) of training logs (Caffe's tools/extra/plot_training_log.py)",
                                 computes=False),
    "extract_seconds": Command("netcompress.tools.logs:extract_seconds_main",
                               "seconds since the solver's start of each iteration line (Caffe's extract_seconds.py)",
                               computes=False),
    "info": Command("netcompress.info:main",
                    "versions, how the extension was built (CUDA kernels or not, and why), threads, devices"),
    # Caffe's data tools
    "convert_mnist": Command("netcompress.data.tools:convert_mnist_main",
                             "convert MNIST IDX files to an LMDB or LevelDB (Caffe's convert_mnist_data)"),
    "convert_mnist_siamese": Command("netcompress.data.tools:convert_mnist_siamese_main",
                                     "random MNIST digit pairs for Caffe's siamese example "
                                     "(convert_mnist_siamese_data)"),
    "convert_cifar": Command("netcompress.data.tools:convert_cifar_main",
                             "convert CIFAR-10's binary batches to LMDBs or LevelDBs (Caffe's convert_cifar_data)"),
    "convert_imageset": Command("netcompress.data.tools:convert_imageset_main",
                                "convert an image list to an LMDB or LevelDB (Caffe's convert_imageset)"),
    "compute_image_mean": Command("netcompress.data.tools:compute_image_mean_main",
                                  "compute the mean image of an LMDB or LevelDB (Caffe's compute_image_mean)"),
    "classify": Command("netcompress.tools.classify:main",
                        "classify images with a deploy net, outputs saved as .npy (Caffe's python/classify.py)"),
    "detect": Command("netcompress.tools.detect:main",
                      "classify windows of images with context padding, R-CNN style (Caffe's python/detect.py)"),
    "extract_features": Command("netcompress.tools.features:extract_features_main",
                                "a trained net's blobs over its data into new LMDBs/LevelDBs (Caffe's extract_features)"),
    "summarize": Command("netcompress.tools.summarize:main",
                         "a net's layers, blobs, params and windows, a row a layer (Caffe's tools/extra/summarize.py)",
                         computes=False),
    "pycaffe": Command("netcompress.tools.run_pycaffe:main",
                       "run a Caffe-era pycaffe script unchanged (its 'import caffe' gets netcompress.pycaffe)"),
    "draw_net": Command("netcompress.tools.draw:main",
                        "draw a net's graph to an image or DOT file (Caffe's python/draw_net.py; needs pydot)",
                        computes=False),
    "convert_db": Command("netcompress.data.tools:convert_db_main",
                          "copy a database's records into a new LMDB or LevelDB (e.g. LevelDB -> LMDB)"),
    "mnist5k": Command("netcompress.data.tools:mnist5k_main",
                       "write the embedded 5,000 real MNIST digits as train/test LMDBs"),
    # the reference fork's compression scripts
    "dns_to_normal": Command("netcompress.tools.convert:dns_to_normal_main",
                             "convert a raw DNS model to a normal model (dns_to_normal.py)"),
    "inq_to_normal": Command("netcompress.tools.convert:inq_to_normal_main",
                             "convert a raw INQ model to a normal model (inq_to_normal.py)"),
    "model2INQ_raw": Command("netcompress.tools.convert:model2INQ_raw_main",
                             "convert a normal or raw DNS model to an INQ raw model (model2INQ_raw.py)"),
    "parse_model": Command("netcompress.tools.convert:parse_model_main",
                           "write a binary caffemodel as protobuf text (parse_model.py)"),
    "encode_compact": Command("netcompress.tools.compact:encode_compact_main",
                              "encode a quantized model in the compact 4/4 format (encode_compact.py)"),
    "decode_compact": Command("netcompress.tools.compact:decode_compact_main",
                              "decode a compact 4/4 file into a normal caffemodel (decode_compact.py)"),
    "encode_compact48": Command("netcompress.tools.compact:encode_compact48_main",
                                "encode a quantized model in the compact 4/8 format (encode_compact48.py)"),
    "decode_compact48": Command("netcompress.tools.compact:decode_compact48_main",
                                "decode a compact 4/8 file into a normal caffemodel (decode_compact48.py)"),
    "report": Command("netcompress.tools.report:main", "kept counts, compression rate and stored sizes of a model"),
    # recipes: knowledge distillation (recipes-spec 1.3, 4.3)
    "rename_layers": Command("netcompress.tools.kd:rename_layers_main",
                             "prefix every layer and blob of a net and its caffemodel (a KD teacher, e.g. t_)"),
    "dump_logits": Command("netcompress.tools.kd:dump_logits_main",
                           "write a net's blob (teacher logits) over a data source to HDF5 for HDF5Data"),
    # recipes: Net2Net (recipes-spec 1)
    "net2wider": Command("netcompress.tools.net2net:net2wider_main",
                         "Net2WiderNet: more outputs for a layer, same function (or the random-pad baseline)"),
    "net2deeper": Command("netcompress.tools.net2net:net2deeper_main",
                          "Net2DeeperNet: insert an identity layer (or the random-init baseline)"),
    "net2net_mutate": Command("netcompress.tools.net2net:net2net_mutate_main",
                              "one random Net2Net mutation (deeper, deeper_pool, wider, skip, group)"),
    "net2net_search": Command("netcompress.tools.net2net:net2net_search_main",
                              "a small Net2Net mutation search: mutate, fine-tune, keep the best"),
    # recipes: SNIP and Shallow-Deep networks (recipes-spec 2)
    "snip_prune": Command("netcompress.tools.snip:main",
                          "SNIP: prune a net at initialisation by connection sensitivity (masked layers, raw model)"),
    "make_sdn_net": Command("netcompress.tools.sdn:make_sdn_net_main",
                            "write a Shallow-Deep net (internal classifiers, SDNLoss, growth stages) from a cell template"),
    "sdn_early_exit": Command("netcompress.tools.sdn:sdn_early_exit_main",
                              "SDN confidence early exit: accuracy, exit counts and average ops per threshold"),
    # recipes: the MicroNet Challenge pipeline (recipes-spec 4)
    "micronet_score": Command("netcompress.tools.micronet:score_main",
                              "MicroNet Challenge score (#OPs, #Params) of an integer deploy net"),
    "import_pth": Command("netcompress.tools.micronet:import_pth_main",
                          "a PyTorch state dict into a caffemodel by a named map (micronet-densenet-final)"),
    "make_densenet": Command("netcompress.tools.densenet:main",
                             "write a MicroNet DenseNet-BC prototxt (plain, quantized student or integer deploy)"),
    "bn_reestimate": Command("netcompress.tools.bn_reestimate:main",
                             "re-estimate BatchNorm statistics with TRAIN-phase forwards (PyTorch-style EMA)"),
    "micronet_merge": Command("netcompress.tools.micronet_merge:main",
                              "merge a quantized student into the integer deploy net (Scale + IntQuant)"),
    # recipes: ε-ResNet (recipes-spec 3, 5.5)
    "make_epsilon_resnet": Command("netcompress.tools.eresnet:make_epsilon_resnet_main",
                                   "write a pre-activation ε-ResNet train/val prototxt (depth 6n+2)"),
    "compress_epsilon_resnet": Command("netcompress.tools.eresnet:compress_epsilon_resnet_main",
                                       "drop an ε-ResNet's discarded blocks: deploy prototxt, caffemodel and .cfg"),
    # pipelines
    "pipeline": Command("netcompress.pipeline:main",
                        "the LeNet compression pipeline end to end on the embedded digits"),
}


# How `netcompress --help` lists the commands: (title, names), every command in one section.
SECTIONS: list[tuple[str, list[str]]] = [
    ("Caffe's tool verbs", ["train", "test", "time", "device_query", "upgrade", "info"]),
    ("Caffe's data tools", ["mnist5k", "convert_mnist", "convert_cifar", "convert_mnist_siamese", "convert_imageset",
                            "compute_image_mean", "convert_db", "extract_features"]),
    ("Caffe's Python and log tools", ["pycaffe", "classify", "detect", "draw_net", "summarize", "parse_log",
                                      "extract_seconds", "plot_training_log", "plot"]),
    ("the reference fork's compression scripts", ["dns_to_normal", "inq_to_normal", "model2INQ_raw", "parse_model",
                                                  "encode_compact", "decode_compact", "encode_compact48",
                                                  "decode_compact48", "report"]),
    ("recipes", ["rename_layers", "dump_logits", "net2wider", "net2deeper", "net2net_mutate", "net2net_search",
                 "snip_prune", "make_sdn_net", "sdn_early_exit", "micronet_score", "import_pth", "make_densenet",
                 "bn_reestimate", "micronet_merge", "make_epsilon_resnet", "compress_epsilon_resnet"]),
    ("pipelines", ["pipeline"]),
]


def load_command(name: str) -> Callable[[Sequence[str]], int]:
    """The entry point of command `name` (imports its module)."""
    module, func = COMMANDS[name].target.split(":")
    return getattr(importlib.import_module(module), func)
