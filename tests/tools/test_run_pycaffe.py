"""netcompress pycaffe SCRIPT.py: a Caffe-era script's `import caffe` gets netcompress.pycaffe."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from netcompress.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]

SCRIPT = '''
import sys
import caffe
from caffe import layers as L, params as P, to_proto
from caffe.proto import caffe_pb2
import helper  # a module beside the script

n = caffe.NetSpec()
n.data = L.Input(shape=dict(dim=[2, 3]))
n.ip = L.InnerProduct(n.data, num_output=int(sys.argv[1]), weight_filler=dict(type="constant", value=1))
with open(sys.argv[2], "w") as f:
    f.write(str(n.to_proto()))
net = caffe.Net(sys.argv[2], caffe.TEST)
net.blobs["data"].data[...] = 1
out = net.forward()["ip"]
print("ip", out.shape, float(out.sum()), helper.VALUE, isinstance(net, caffe.Net))
sys.exit(int(sys.argv[3]))
'''


def test_a_script_runs_unchanged(tmp_path):
    (tmp_path / "make_net.py").write_text(SCRIPT)
    (tmp_path / "helper.py").write_text("VALUE = 7\n")
    # in a fresh process, as a user runs it (no 'caffe' imported before)
    proc = subprocess.run([sys.executable, "-m", "netcompress", "pycaffe", str(tmp_path / "make_net.py"), "4",
                           str(tmp_path / "net.prototxt"), "0"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "ip (2, 4) 24.0 7 True" in proc.stdout
    assert 'type: "InnerProduct"' in (tmp_path / "net.prototxt").read_text()


def test_exit_codes_and_errors(tmp_path, capsys):
    (tmp_path / "make_net.py").write_text(SCRIPT)
    (tmp_path / "helper.py").write_text("VALUE = 7\n")
    assert cli_main(["pycaffe", str(tmp_path / "make_net.py"), "2", str(tmp_path / "n.prototxt"), "3"]) == 3
    (tmp_path / "broken.py").write_text(textwrap.dedent("""
        import caffe
        def f():
            return caffe.Net("/no/such.prototxt", caffe.TEST)
        f()
    """))
    assert cli_main(["pycaffe", str(tmp_path / "broken.py")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "broken.py\", line 5" in err and "/no/such.prototxt" in err
    assert "runpy" not in err  # the runner's own frames are left out
    assert cli_main(["pycaffe", str(tmp_path / "none.py")]) == 1
    assert "none.py: no such file" in capsys.readouterr().err
    assert cli_main(["pycaffe"]) == 2


CHILDREN = '''
import multiprocessing
import subprocess
import sys

import caffe


def report(queue):
    import caffe as child_caffe  # a spawned child imports this script again, `import caffe` included
    queue.put(child_caffe.__name__)


if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=report, args=(queue,))
    p.start()
    p.join()
    other = subprocess.run([sys.executable, "-c", "import caffe, caffe.io; print(caffe.__name__, caffe.io.__name__)"],
                           capture_output=True, text=True)
    print("spawned:", queue.get(), "| python -c:", other.stdout.strip(), other.stderr.strip()[-300:])
    sys.exit(p.exitcode)
'''


def test_a_scripts_errors_name_pycaffes_calls_not_the_commands_flags(tmp_path, capsys):
    # (a file given in another's place: the error says which call takes it; it named `netcompress`'s flags)
    (tmp_path / "net.prototxt").write_text('name: "n"\nlayer { name: "x" type: "Input" top: "x" '
                                           'input_param { shape { dim: 1 } } }\n')
    (tmp_path / "swapped.py").write_text(textwrap.dedent("""
        import sys
        import caffe
        caffe.get_solver(sys.argv[1])
    """))
    assert cli_main(["pycaffe", str(tmp_path / "swapped.py"), str(tmp_path / "net.prototxt")]) == 1
    err = capsys.readouterr().err
    assert "It is a net prototxt (1 layer): a solver names it in its net: field, and Net(...) takes it." in err, err
    assert "--model" not in err


def test_the_scripts_own_processes_import_caffe_too(tmp_path, capfd):
    # python/train.py starts its solvers with multiprocessing; where the start method is spawn or forkserver
    # (Python 3.14's default) the children import the script again, and other scripts may start `python`.
    (tmp_path / "children.py").write_text(CHILDREN)
    before = os.environ.get("PYTHONPATH")
    assert cli_main(["pycaffe", str(tmp_path / "children.py")]) == 0
    out = capfd.readouterr().out
    assert "spawned: netcompress.pycaffe | python -c: netcompress.pycaffe netcompress.pycaffe.io" in out
    assert os.environ.get("PYTHONPATH") == before  # the runner leaves the environment as it found it
