"""The repo-root evaluate.py must not hide the `evaluate` library, however the root gets onto sys.path."""

import os
import subprocess
import sys
import textwrap

import pytest

from modeling_georsclip.resources import package_path

from conftest import ROOT, subprocess_env

pytestmark = pytest.mark.slow  # every test starts Python processes that import the evaluate library
LIBRARY = os.path.join("site-packages", "evaluate", "__init__.py")
ENV = subprocess_env()
ENV.pop("PYTHONPATH", None)
PROBE = textwrap.dedent(
    """
    import evaluate

    def test_library_is_importable():
        assert evaluate.__file__.endswith({library!r}), evaluate.__file__
        metric = evaluate.load({module!r})  # the metric script itself runs `import evaluate`
        assert metric.compute(predictions=[[0.1, 0.9]], references=[1], topk=[1]) == {{"top1": 100.0}}
    """
).format(library=LIBRARY, module=str(package_path("metrics", "modules", "zeroshot_accuracy")))


def run(args, **env):
    return subprocess.run(args, cwd=ROOT, env={**ENV, **env}, capture_output=True, text=True, timeout=180)


def test_python_c_import_from_repo_root():
    proc = run([sys.executable, "-c", "import evaluate; print(evaluate.__file__); print(callable(evaluate.load))"])
    assert proc.returncode == 0, proc.stderr
    path, has_load = proc.stdout.split()
    assert path.endswith(LIBRARY) and has_load == "True"


def test_pythonpath_with_repo_root():
    proc = run([sys.executable, "-c", "import evaluate; print(evaluate.__file__)"],
               PYTHONPATH=str(ROOT))
    assert proc.returncode == 0 and proc.stdout.strip().endswith(LIBRARY), proc.stderr


def test_script_runs_as_main_and_code_inside_it_gets_the_library(tmp_path):
    """``python evaluate.py`` (sys.path[0] = repo root) runs our CLI; code in that process that imports
    evaluate (here an atexit hook installed through sitecustomize) gets the library."""
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit\n"
        "def _check():\n"
        "    import evaluate\n"
        "    print('LIB', evaluate.__file__, callable(getattr(evaluate, 'load', None)))\n"
        "atexit.register(_check)\n"
    )
    proc = run([sys.executable, "evaluate.py", "--help"], PYTHONPATH=str(tmp_path))
    assert proc.returncode == 0 and "--data-root" in proc.stdout, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LIB")][0]
    assert line.split()[1].endswith(LIBRARY) and line.split()[2] == "True"


def test_python_m_pytest_and_pythonpath_option(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    common = [sys.executable, "-m", "pytest", str(probe), "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT)]
    for extra in ([], ["-o", "pythonpath=."]):
        proc = run(common + extra)
        assert proc.returncode == 0, (extra, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "1 passed" in proc.stdout
