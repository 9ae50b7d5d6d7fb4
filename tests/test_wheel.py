"""Every verb works from an installed wheel, outside the repository (issue 9).

Build the wheel from a copy of the tree (offline, no build isolation), install it with ``pip --target`` into a
temporary folder (not editable), then from another temporary folder run convert → build a dataset → train 2
steps → evaluate → push --dry-run with ``PYTHONPATH`` = that folder only (the venv supplies the dependencies).
A ``sitecustomize`` probe on the path records ``modeling_georsclip.__file__`` in every process that imports it,
the ``accelerate launch`` child included, so the test proves the installed copy ran, not the clone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from modeling_georsclip.evaluation.fixtures import make_eval_fixture
from modeling_georsclip.resources import package_path

from conftest import ROOT, subprocess_env

pytestmark = pytest.mark.slow  # builds a wheel and runs every verb as a subprocess (~1-2 min on 2 cores)

PROBE = """\
import atexit, os, sys

def _record():
    module = sys.modules.get("modeling_georsclip")
    if module is not None:
        with open(os.environ["GEORSCLIP_IMPORT_LOG"], "a") as log:
            log.write(f"{os.path.basename(sys.argv[0])}\\t{module.__file__}\\n")

atexit.register(_record)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the tree, so the build's own folders never land in the repository."""
    base = tmp_path_factory.mktemp("wheel-build")
    src = base / "src"
    junk = shutil.ignore_patterns(".git", ".venv", "outputs", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                  ".pytest_cache", ".ruff_cache")
    shutil.copytree(ROOT, src, symlinks=True, ignore=junk)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(base / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (found,) = (base / "dist").glob("georsclip-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """The wheel installed with ``pip --target``; a working folder outside the repo; the child environment."""
    base = tmp_path_factory.mktemp("wheel-install")
    site, probe, work = base / "site", base / "probe", base / "work"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    work.mkdir()
    assert ROOT not in work.parents and ROOT not in site.parents
    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(site), str(probe)]),
                         GEORSCLIP_IMPORT_LOG=str(base / "imports.log"))
    return {"site": site, "work": work, "env": env, "log": base / "imports.log"}


def run(installed: dict, *cmd: str | Path, timeout: int = 300) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=installed["work"], env=installed["env"], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_wheel_ships_all_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    source = package_path()
    shipped = {p.relative_to(source.parent).as_posix() for p in source.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    missing = sorted(shipped - names)
    assert not missing, f"files of the package missing from the wheel: {missing[:10]}"
    for name in ("cards/model_card.md", "cards/dataset_card.md", "configs/tiny_cpu.yaml", "configs/ret2.yaml",
                 "configs/rs5m_vitb32.yaml", "configs/lora.yaml", "configs/accelerate/ddp_8gpu.yaml",
                 "tokenizer_data/vocab.json", "tokenizer_data/merges.txt", "samples/rs-samples/captions.csv",
                 "samples/rs-samples/airslt_anno.json", "samples/rs-samples/images/remoteclip__airport.jpg"):
        assert f"modeling_georsclip/{name}" in names, name
    for module in ("zeroshot_accuracy", "retrieval_recall", "selo_scores"):
        assert {f"modeling_georsclip/metrics/modules/{module}/{f}" for f in (f"{module}.py", "README.md")} <= names
    archs = [n for n in names if n.startswith("modeling_georsclip/archs/")]
    assert archs or not package_path("archs").is_dir()
    samples = [i for i in zipfile.ZipFile(wheel).infolist() if "/samples/" in i.filename]
    assert sum(i.file_size for i in samples) < 5 * 2**20  # the limit for shipping samples in the wheel
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "scripts/"))]


def test_every_verb_runs_from_the_installed_wheel(installed, open_clip_checkpoint):
    site, work, python = installed["site"], installed["work"], sys.executable
    where = run(installed, python, "-c", "import modeling_georsclip; print(modeling_georsclip.__file__)").split()[0]
    assert Path(where).is_relative_to(site), where
    samples = site / "modeling_georsclip" / "samples" / "rs-samples"

    # convert (console script) -> a plain CLIP folder with its model card
    checkpoint, arch = open_clip_checkpoint  # the tiny deterministic open_clip model main.py converts
    run(installed, site / "bin" / "georsclip-convert", "--checkpoint", checkpoint, "--arch", arch, "--output", "base")
    for name in ("config.json", "model.safetensors", "README.md", "processor_config.json", "tokenizer.json"):
        assert (work / "base" / name).is_file(), name
    assert json.loads((work / "base" / "config.json").read_text())["architectures"] == ["CLIPModel"]
    assert ModelCard.load(work / "base" / "README.md").data.pipeline_tag == "zero-shot-image-classification"

    # build a dataset from the samples shipped in the wheel -> parquet shards + dataset card
    run(installed, python, "-m", "modeling_georsclip.data.build", "--captions", samples / "captions.csv",
        "--images", samples / "images", "--output", "dataset", "--config", "pub11", "--split", "train",
        "--shard-size", "16", "--filters", "invalid")
    assert sorted((work / "dataset" / "data" / "pub11").glob("train-*.parquet"))
    card = DatasetCard.load(work / "dataset" / "README.md")
    assert "pub11" in {c["config_name"] for c in card.data.configs}

    # train 2 steps under accelerate launch -m, packaged recipe by name (its sample paths resolve to the wheel)
    data = json.dumps([{"path": "dataset", "config": "pub11"}])
    run(installed, python, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "modeling_georsclip.train", "--config", "tiny_cpu",
        "--model", "base", "--data", data, "--output_dir", "run", "--max_steps", "2", "--num_workers", "0",
        "--checkpoint_every", "0", "--report_to", "none", timeout=400)
    final = work / "run" / "final"
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (final / name).is_file(), name

    # evaluate (module) -> results.json, and the model card gains its model-index
    make_eval_fixture(work / "eval-data", samples)
    run(installed, python, "-m", "modeling_georsclip.evaluate", "--model", final, "--data-root", "eval-data",
        "--tasks", "zsc,retrieval", "--output", "results.json")
    results = json.loads((work / "results.json").read_text())
    runs = results["runs"] if "runs" in results else [results]
    assert {"zsc", "retrieval"} <= set(runs[0]["tasks"])
    assert {r.dataset_name for r in ModelCard.load(final / "README.md").data.eval_results} >= {"rs-scenes"}

    # push (console script), dry run: lists the files, uploads nothing
    listing = run(installed, site / "bin" / "georsclip-push", final, "--repo-id", "me/wheel-test", "--dry-run")
    assert "model.safetensors" in listing and "me/wheel-test" in listing

    imported = [line.split("\t") for line in installed["log"].read_text().splitlines()]
    programs = {program for program, _ in imported}
    assert {"georsclip-convert", "build.py", "train.py", "evaluate.py", "georsclip-push"} <= programs, programs
    outside = [(program, path) for program, path in imported if not Path(path).is_relative_to(site)]
    assert not outside, outside
