"""benchmarks/run_checkout.py runs a script or module with another checkout's netcompress, whatever the target
puts on sys.path (the benchmark scripts put their own repository first)."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "benchmarks", "run_checkout.py")


def _stub_checkout(root) -> str:
    pkg = root / "netcompress"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("MARK = 'the stub checkout'\n")
    (pkg / "__main__.py").write_text("import sys\nimport netcompress\nprint('main of', netcompress.MARK, sys.argv[1:])\n")
    return str(root)


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, env=env, timeout=300)


def test_script_sees_the_other_checkout(tmp_path):
    checkout = _stub_checkout(tmp_path / "old")
    script = tmp_path / "probe.py"
    # As the benchmark scripts do: this repository first on sys.path, where PYTHONPATH would lose to it.
    script.write_text(f"import sys\nsys.path.insert(0, {REPO!r})\nimport netcompress\n"
                      "print(netcompress.MARK, netcompress.__file__, sys.argv[1:])\n")
    r = _run(checkout, str(script), "--flag", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:3] == ["the", "stub", "checkout"]
    assert os.path.join(checkout, "netcompress", "__init__.py") in r.stdout and "['--flag', '1']" in r.stdout
    assert f"netcompress from {os.path.join(checkout, 'netcompress')}" in r.stderr


def test_module_runs_from_the_other_checkout(tmp_path):
    r = _run(_stub_checkout(tmp_path / "old"), "-m", "netcompress", "time", "--x")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "main of the stub checkout ['time', '--x']"


def test_this_checkout_by_default_and_bad_arguments(tmp_path):
    r = _run(REPO, "-m", "netcompress", "--version")
    assert r.returncode == 0, r.stderr
    assert f"netcompress from {os.path.join(REPO, 'netcompress')}" in r.stderr
    bad = _run(str(tmp_path), "x.py")
    assert bad.returncode != 0 and "not a netcompress checkout" in bad.stderr
    assert _run(REPO).returncode == 2 and "usage: run_checkout.py" in _run(REPO).stderr


def test_nothing_is_imported_before_the_target(tmp_path):
    """The target imports torch (and sets what must precede it, as the commands' OMP_WAIT_POLICY) itself."""
    script = tmp_path / "probe.py"
    script.write_text("import sys\nprint('torch' in sys.modules, 'netcompress' in sys.modules)\n"
                      "import netcompress\nprint(netcompress.MARK)\n")
    r = _run(_stub_checkout(tmp_path / "old"), str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["False False", "the stub checkout"]
