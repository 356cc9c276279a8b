"""`import caffe` where netcompress/pycaffe/importable is on the import path: this module replaces itself with
netcompress.pycaffe (and its submodules as caffe.io, caffe.proto, ...), as `install_as_caffe` does, and logs as
`netcompress pycaffe` does (glog's lines on stderr), as the process that started this one."""
import sys

from netcompress import pycaffe as _pycaffe
from netcompress.log import setup_logging as _setup_logging

_setup_logging()
_pycaffe.install_as_caffe(_replacing=sys.modules[__name__])
