"""The main job, end to end: dataset → base model → fine-tune → evaluate → model card → Hub.

    python -m modeling_georsclip.main                      # embedded default: vendored samples, tiny model, CPU
    python -m modeling_georsclip.main --checkpoint hf://Zilun/GeoRSCLIP/ckpt/RS5M_ViT-B-32.pt \\
        --arch ViT-B-32-quickgelu --dataset Zilun/RS5M --train-config ret2 \\
        --data-root /data/rs-benchmarks --num-processes 8 --output runs/georsclip-b32 --push-to-hub me/GeoRSCLIP-B-32

Every stage runs the same command a user would type (``python -m modeling_georsclip.data.build``,
``python -m modeling_georsclip.convert``, ``accelerate launch -m modeling_georsclip.train``,
``python -m modeling_georsclip.evaluate``), so the main job exercises exactly the documented CLIs, and works
the same from an installed wheel as from a clone: nothing depends on the working folder being the repository.
Everything lands in one output folder (default ``./outputs/main`` under the working folder)::

    OUT/model/          plain CLIP checkpoint + processor + model card (model-index, widget) + training_curves.png
    OUT/dataset/        mini RS5M: parquet shards + dataset card (README.md) + build reports
    OUT/results.json    every number; OUT/results.md the markdown table (base model vs fine-tuned)
    OUT/selo/           SeLo heat-map overlays (PNG), one per query
    OUT/work/           base checkpoint, conversion, training checkpoints and logs, evaluation data
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .log import get_logger
from .resources import ResourceError, resolve_config, samples_dir

logger = get_logger(__name__)


# The embedded demo trains a little longer than configs/tiny_cpu.yaml (which tests share) and validates on the
# way, so the training curves show something; the model card is named after the demo.
DEMO_TRAIN_ARGS = "--epochs 8 --eval_every 3 --model_name GeoRSCLIP-tiny-demo"


class StageError(RuntimeError):
    """A stage's command failed; the message names the stage and the command to rerun."""


def run_stage(name: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Run one stage's CLI with inherited output; returns its wall time in seconds."""
    logger.info("stage %s: %s", name, shlex.join(str(c) for c in cmd))
    start = time.perf_counter()
    completed = subprocess.run([str(c) for c in cmd], env={**os.environ, **(env or {})})
    if completed.returncode != 0:
        raise StageError(f"stage {name!r} failed (exit {completed.returncode}); rerun: {shlex.join(map(str, cmd))}")
    seconds = time.perf_counter() - start
    logger.info("stage %s done in %.1f s", name, seconds)
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_georsclip.main", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--output", type=Path, default=Path("outputs") / "main",
                        help="output folder (default: outputs/main under the working folder)")
    base = parser.add_argument_group("base model (default: a deterministic tiny open_clip checkpoint)")
    base.add_argument("--checkpoint", help="open_clip checkpoint to convert: local path or hf://OWNER/REPO/path")
    base.add_argument("--arch", help="open_clip arch of --checkpoint (e.g. ViT-B-32-quickgelu)")
    base.add_argument("--base-model", help="start from an existing CLIP folder or Hub id instead (no conversion)")
    data = parser.add_argument_group("training data (default: mini RS5M built from the vendored samples)")
    data.add_argument("--dataset", help="an existing RS5M-format dataset (folder or Hub id): skip the build")
    data.add_argument("--dataset-config", default="default", help="config of --dataset (pub11, rs3, default)")
    data.add_argument("--samples", type=Path, default=None,
                      help="folder of real RS samples (captions.csv, images/, airslt_anno.json); default: the ones "
                           "shipped in the package")
    data.add_argument("--captions", type=Path, help="CSV file,caption[,source] (default: SAMPLES/captions.csv)")
    data.add_argument("--images", type=Path, help="image folder of --captions (default: SAMPLES/images)")
    train = parser.add_argument_group("training")
    train.add_argument("--train-config", default="tiny_cpu",
                       help="packaged recipe name (tiny_cpu, ret2, rs5m_vitb32, lora) or a YAML path")
    train.add_argument("--train-args", default=None,
                       help="extra train.py overrides, e.g. '--max_steps 100' (default for the embedded demo: "
                            f"'{DEMO_TRAIN_ARGS}')")
    train.add_argument("--num-processes", type=int, default=1, help="accelerate processes (GPUs, or CPU processes)")
    train.add_argument("--skip-train", action="store_true", help="evaluate the base model only")
    evaluation = parser.add_argument_group("evaluation (default: mini benchmarks from the vendored samples)")
    evaluation.add_argument("--data-root", type=Path, help="folder with zsc/, retrieval/, selo/ benchmark data")
    evaluation.add_argument("--tasks", default="zsc,retrieval,selo")
    evaluation.add_argument("--selo-mode", default="paper", choices=["paper", "clean"])
    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push-to-hub", metavar="REPO", help="model repo; the dataset goes to REPO-data")
    hub.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list what would be uploaded")
    return parser


def default_base_model(work: Path) -> tuple[Path, str]:
    """Write a deterministic tiny open_clip checkpoint; return (checkpoint, arch JSON) for the converter."""
    from .testing import write_open_clip_checkpoint

    checkpoint, arch = write_open_clip_checkpoint(work / "open_clip", seed=0, image_size=64, patch_size=16, width=64)
    return checkpoint, str(arch)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.base_model:  # fail before any stage runs; train.py reports corrupt weights the same way
        from .inference import ModelLoadError, check_model_path

        try:
            check_model_path(args.base_model)
        except ModelLoadError as err:
            print(f"error: --base-model: {err}", file=sys.stderr)
            return 2
    samples = (args.samples or samples_dir()).resolve()
    if not (samples / "images").is_dir():
        print(f"error: no RS samples at {samples}: pass --samples DIR (a folder with captions.csv, images/ and "
              "airslt_anno.json, e.g. samples/rs-samples of a GeoRSCLIP clone)", file=sys.stderr)
        return 2
    try:
        train_config = resolve_config(args.train_config)
    except ResourceError as err:
        print(f"error: --train-config: {err}", file=sys.stderr)
        return 2
    out: Path = args.output.resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    timings: dict[str, float] = {}
    try:
        # 1. dataset -------------------------------------------------------------------------------
        if args.dataset:
            dataset, dataset_config = args.dataset, args.dataset_config
        else:
            dataset, dataset_config = str(out / "dataset"), "pub11"
            timings["dataset"] = run_stage("dataset", [
                python, "-m", "modeling_georsclip.data.build",
                "--captions", args.captions or samples / "captions.csv", "--images", args.images or samples / "images",
                "--output", dataset, "--config", "pub11", "--split", "train", "--shard-size", "16",
                "--filters", "invalid,dedup", "--overwrite",  # the RS keyword filter is for web alt-text, not RS captions
            ])
        # 2. base model ----------------------------------------------------------------------------
        if args.base_model:
            base = args.base_model
        else:
            checkpoint, arch = (args.checkpoint, args.arch) if args.checkpoint else default_base_model(work)
            if not arch:
                raise StageError("--checkpoint needs --arch (see the README's table of public checkpoints)")
            base = str(work / "base")
            timings["convert"] = run_stage("convert", [
                python, "-m", "modeling_georsclip.convert", "--checkpoint", checkpoint, "--arch", arch,
                "--output", base, "--overwrite",
            ])
        # 3. fine-tune -----------------------------------------------------------------------------
        model_dir = out / "model"
        if args.skip_train:
            final = Path(base)
        else:
            train_out = work / "train"
            shutil.rmtree(train_out, ignore_errors=True)
            launch = [python, "-m", "accelerate.commands.launch", "--num_processes", str(args.num_processes),
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
            env = {}
            if args.num_processes > 1:
                import torch

                launch.append("--multi_gpu")
                if not torch.cuda.is_available():  # else each CPU process would run alone as rank 0 of 1
                    env["ACCELERATE_USE_CPU"] = "1"
            data_spec = json.dumps([{"path": dataset, "config": dataset_config}])
            timings["train"] = run_stage("train", [
                *launch, "-m", "modeling_georsclip.train", "--config", train_config, "--model", base, "--data", data_spec,
                "--output_dir", train_out, "--report_to", "tensorboard", *shlex.split(DEMO_TRAIN_ARGS if args.train_args is None and not args.checkpoint else args.train_args or ""),
            ], env=env)
            final = train_out / "final"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(final, model_dir)
        # 4. evaluate ------------------------------------------------------------------------------
        data_root = args.data_root
        if data_root is None:
            from .evaluation.fixtures import make_eval_fixture

            data_root = work / "eval-data"
            shutil.rmtree(data_root, ignore_errors=True)
            make_eval_fixture(data_root, samples)
        results = out / "results.json"
        models = [str(model_dir)] if args.skip_train else [str(model_dir), base]
        timings["evaluate"] = run_stage("evaluate", [
            python, "-m", "modeling_georsclip.evaluate", "--model", *models, "--tasks", args.tasks, "--data-root", data_root,
            "--output", results, "--selo-mode", args.selo_mode, "--overlay-dir", out / "selo",
        ])
        # 5. check the checkpoint the way a Hub widget would load it -------------------------------
        check = pipeline_check(model_dir, samples)
        # 6. Hub -----------------------------------------------------------------------------------
        if args.push_to_hub:
            push(out, model_dir, args.push_to_hub, args.dry_run, dataset_built=not args.dataset)
        # 7. demo Space for the model: OUT/space/ (with --push-to-hub REPO pushed, or listed, as REPO-demo)
        from .space import write_main_space

        write_main_space(out, model_dir, args.push_to_hub, args.dry_run)
    except StageError as err:
        logger.error("%s", err)
        return 1
    print_summary(out, model_dir, results, timings, check)
    return 0


def pipeline_check(model_dir: Path, samples: Path) -> str:
    """Load the output with stock ``transformers.pipeline`` (no remote code) and classify a real image."""
    from transformers import pipeline

    classifier = pipeline("zero-shot-image-classification", model=str(model_dir))
    image = samples / "images" / "remoteclip__airport.jpg"
    labels = ["airport", "farmland", "forest", "harbor", "residential area"]
    top = classifier(str(image), candidate_labels=labels)[0]
    return f"pipeline('zero-shot-image-classification') on {image.name}: top label {top['label']!r} ({top['score']:.3f})"


def push(out: Path, model_dir: Path, repo: str, dry_run: bool, dataset_built: bool) -> None:
    """Upload model (with results) and dataset; without token/network, everything stays saved."""
    from .hub import PushError, push_folder

    for name in ("results.json", "results.md"):
        if (out / name).exists():
            shutil.copy2(out / name, model_dir / name)
    targets = [(model_dir, repo, "model")]
    if dataset_built:
        targets.append((out / "dataset", f"{repo}-data", "dataset"))
    for folder, repo_id, repo_type in targets:
        try:
            push_folder(folder, repo_id, repo_type=repo_type, dry_run=dry_run,
                        commit_message=f"GeoRSCLIP main job: {repo_type}", ignore_patterns=[".build/**"])
        except PushError as err:
            logger.warning("push skipped: %s", err)


def print_summary(out: Path, model_dir: Path, results: Path, timings: dict[str, float], check: str) -> None:
    """Where everything is, the results table and the stage timings."""
    table = results.with_suffix(".md")
    lines = ["", "=" * 100, "GeoRSCLIP main job: done", "=" * 100]
    if table.exists():
        lines += [table.read_text(encoding="utf-8").strip(), ""]
    lines.append(check)
    lines.append("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    # the job's own pictures: not its scratch folder, nor the sample images inside the Space's package copy
    pictures = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")
                      if p.relative_to(out).parts[0] not in ("work", "space"))
    lines += [
        "", f"output folder: {out}",
        f"  model (plain CLIP, loads with transformers.CLIPModel / pipeline): {model_dir.relative_to(out)}/",
        f"  model card with model-index results: {(model_dir / 'README.md').relative_to(out)}",
        f"  results: {results.relative_to(out)} and {table.relative_to(out)}",
        "  dataset card and shards: dataset/README.md, dataset/data/" if (out / "dataset").exists() else "",
        "  pictures: " + ", ".join(pictures),
        "  demo Space (app, card, package copy): space/" if (out / "space").exists() else "",
    ]
    print("\n".join(line for line in lines if line is not None))


if __name__ == "__main__":
    sys.exit(main())
