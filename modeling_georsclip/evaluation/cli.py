"""``python evaluate.py``: every GeoRSCLIP benchmark for one or more models, results to JSON, markdown, model card.

    python evaluate.py --model DIR_OR_HUB_ID [DIR_OR_HUB_ID ...] --tasks zsc,retrieval,selo --data-root DIR \\
        [--output results.json] [--push-to-hub REPO]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 evaluate.py ...   # sharded

``--data-root`` layout: ``zsc/<NAME>/<class>/<image>`` (AID, RESISC45, EuroSAT, ...),
``retrieval/<NAME>/`` (Karpathy-style caption JSON + images: RSICD, RSITMD, UCM-captions, ...) and
``selo/<NAME>/`` (AIR-SLT: anno.json + imgs/). ``--dataset TASK:NAME=PATH_OR_HUB_ID`` adds a dataset
from anywhere (e.g. a Hub dataset id).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..distributed import leave_process_group
from ..inference import ModelLoadError, PrecisionError, add_precision_argument, load_model, resolve_precision
from ..io import write_text_atomic
from ..log import get_logger
from .common import is_main_process
from .datasets import load_eval_dataset
from .precision_check import CheckSamples, precision_check
from .results import load_runs, model_index_entries, results_markdown
from .retrieval import evaluate_retrieval
from .selo import evaluate_selo
from .zsc import evaluate_zero_shot

logger = get_logger(__name__)

TASK_KINDS = {"zsc": "classification", "retrieval": "retrieval", "selo": "selo"}


def discover_datasets(data_root: Path | None, tasks: Sequence[str], extra: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{task: {name: path_or_hub_id}}`` from ``data_root/<task>/<name>`` folders plus ``--dataset`` entries."""
    found: dict[str, dict[str, str]] = {task: {} for task in tasks}
    if data_root is not None:
        if not data_root.is_dir():
            raise FileNotFoundError(f"--data-root {data_root} is not a folder")
        for task in tasks:
            folder = data_root / task
            if folder.is_dir():
                for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    found[task][sub.name] = str(sub)
    for spec in extra:
        match = re.fullmatch(r"(zsc|retrieval|selo):([^=]+)=(.+)", spec)
        if not match:
            raise ValueError(f"--dataset {spec!r} must look like TASK:NAME=PATH_OR_HUB_ID with TASK in zsc, retrieval, selo")
        task, name, source = match.groups()
        if task in found:
            found[task][name] = source
    return found


def evaluate_model(
    model_id: str,
    datasets: dict[str, dict[str, str]],
    *,
    selo_mode: str = "paper",
    head_mode: str = "paper",
    batch_size: int = 64,
    overlay_dir: Path | None = None,
    accelerator: Any | None = None,
    precision: str = "fp32",
    check_precision: int = 0,
) -> dict[str, Any]:
    """All requested tasks for one model in ``precision``; returns a JSON-ready run record.

    ``check_precision`` > 0 embeds that many of the run's images and captions in fp32 too and records the
    agreement in ``run["precision_check"]``.
    """
    device = accelerator.device if accelerator is not None else None
    model, processor = load_model(model_id, device, precision)
    run: dict[str, Any] = {
        "model": str(model_id),
        "model_name": Path(str(model_id).rstrip("/")).name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "precision": model.inference_precision,
        "settings": {"zero_shot_head": head_mode, "selo_mode": selo_mode, "batch_size": batch_size,
                     "precision": precision, "device": str(model.device)},
        "tasks": {},
    }
    samples = CheckSamples(check_precision)
    for task, named in datasets.items():
        for name, source in named.items():
            logger.info("%s: %s on %s", run["model_name"], task, name)
            dataset = load_eval_dataset(source, TASK_KINDS[task], name=name)
            if check_precision > 0:
                _collect_samples(samples, task, dataset, selo_mode)
            if task == "zsc":
                scores = evaluate_zero_shot(model, processor, dataset, mode=head_mode, batch_size=batch_size,
                                            accelerator=accelerator)
            elif task == "retrieval":
                scores = evaluate_retrieval(model, processor, dataset, batch_size=batch_size, accelerator=accelerator)
            else:
                out = overlay_dir / run["model_name"] / name if overlay_dir is not None else None
                scores = evaluate_selo(model, processor, dataset, mode=selo_mode, batch_size=batch_size,
                                       output_dir=out, accelerator=accelerator)
            scores["source"] = str(source)
            if not Path(source).exists():
                scores["dataset_id"] = str(source)
            run["tasks"].setdefault(task, {})[name] = scores
    run["n_unreadable"] = sum(s.get("n_unreadable", 0) for t in run["tasks"].values() for s in t.values())
    run["precision_check"] = None
    if check_precision > 0 and is_main_process(accelerator):
        run["precision_check"] = precision_check(model, str(model_id), processor, samples, head_mode,
                                                 batch_size, device)
    return run


def _collect_samples(samples: CheckSamples, task: str, dataset: Any, selo_mode: str) -> None:
    """Remember a few of ``dataset``'s images and captions for the precision check."""
    if task == "zsc":
        from .templates import templates_for

        samples.add_zero_shot(dataset.images, dataset.classnames, templates_for(dataset.name))
    elif task == "retrieval":
        samples.add(dataset.images, dataset.captions)
    elif dataset.queries and len(samples.images) < samples.n:
        from .selo import read_scene, selo_windows, window_crops

        samples.add(captions=[query.caption for query in dataset.queries])
        try:
            scene = read_scene(dataset.queries[0].image, selo_mode)
            windows = selo_windows(scene.shape[0], scene.shape[1])[: samples.n - len(samples.images)]
        except (OSError, ValueError) as err:  # the SeLo task itself reports the scene
            logger.warning("precision check skips SeLo crops: %s", err)
            return
        samples.add(window_crops(scene, windows, selo_mode))
    else:
        samples.add(captions=[query.caption for query in dataset.queries])


def update_card(run: dict[str, Any], card_dir: Path, push_to: str | None) -> Path:
    """Merge the run into the model card's model-index (the model folder's, or ``card_dir``'s for Hub ids)."""
    from ..hub import push_folder, update_model_index

    folder = Path(run["model"]) if Path(run["model"]).is_dir() else card_dir / run["model_name"]
    folder.mkdir(parents=True, exist_ok=True)
    update_model_index(folder, model_index_entries(run))
    if push_to:
        push_folder(folder, push_to, commit_message=f"Evaluation results ({', '.join(run['tasks'])})")
    return folder / "README.md"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", nargs="+", default=[], help="model folder(s) or Hub id(s)")
    parser.add_argument("--tasks", default="zsc,retrieval,selo", help="comma-separated: zsc, retrieval, selo")
    parser.add_argument("--data-root", type=Path, default=None, help="folder with zsc/, retrieval/, selo/")
    parser.add_argument("--dataset", action="append", default=[], metavar="TASK:NAME=PATH_OR_HUB_ID")
    parser.add_argument("--output", type=Path, default=Path("results.json"), help="results JSON (+ .md beside it)")
    parser.add_argument("--compare", nargs="*", default=[], type=Path, help="earlier results JSON files to add as columns")
    parser.add_argument("--selo-mode", default="paper", choices=["paper", "clean"])
    parser.add_argument("--head-mode", default="paper", choices=["paper", "openclip"])
    parser.add_argument("--batch-size", type=int, default=64)
    add_precision_argument(parser, "fp32", check=True)
    parser.add_argument("--overlay-dir", type=Path, default=None,
                        help="where SeLo heat-map overlays go (default: <output stem>_selo beside --output)")
    parser.add_argument("--no-card", action="store_true", help="do not update the model card's model-index")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="push the updated card to this Hub repo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; under accelerate, every process leaves its process group before it exits.

    See ``distributed.leave_process_group`` for why (a rank exiting with a live gloo group aborts).
    """
    try:
        return _main(argv)
    finally:
        leave_process_group()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check_precision < 0:
        parser.error(f"--check-precision must be >= 0, got {args.check_precision}")  # exit 2
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASK_KINDS))
    if unknown:
        raise SystemExit(f"evaluate.py: unknown task(s) {unknown}; choose from {sorted(TASK_KINDS)}")
    if not args.model and not args.compare:
        raise SystemExit("evaluate.py: give --model (and data) to evaluate, or --compare to tabulate earlier results")
    datasets = discover_datasets(args.data_root, tasks, args.dataset)
    if args.model and not any(datasets.values()):
        raise SystemExit(f"evaluate.py: no datasets found for tasks {tasks} (check --data-root / --dataset)")

    accelerator = None
    if args.model:
        from accelerate import Accelerator

        accelerator = Accelerator()
        try:
            resolve_precision(args.precision, accelerator.device)
        except PrecisionError as err:  # before any model loads: one line, no traceback
            print(f"error: {err}", file=sys.stderr)
            return 2
    overlay_dir = args.overlay_dir or args.output.with_name(args.output.stem + "_selo")
    try:
        runs = load_runs(args.compare)
        fresh = [
            evaluate_model(m, datasets, selo_mode=args.selo_mode, head_mode=args.head_mode,
                           batch_size=args.batch_size, overlay_dir=overlay_dir, accelerator=accelerator,
                           precision=args.precision, check_precision=args.check_precision)
            for m in args.model
        ]
    except (ModelLoadError, ValueError) as err:  # bad --model/--compare/precision (PrecisionError is a ValueError)
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not is_main_process(accelerator):
        return 0
    runs += fresh
    table = results_markdown(runs)
    # one shape whatever the number of models: {"runs": [run, ...]} (load_runs reads it back for --compare)
    write_text_atomic(args.output, json.dumps({"runs": runs}, indent=2) + "\n")
    write_text_atomic(args.output.with_suffix(".md"), table)
    print(table)
    logger.info("results written to %s and %s", args.output, args.output.with_suffix(".md"))
    if not args.no_card:
        from ..hub import PushError

        for run in fresh:
            try:
                card = update_card(run, args.output.with_name(args.output.stem + "_cards"), args.push_to_hub)
            except PushError as err:
                logger.error("%s", err)
                return 1
            logger.info("model-index of %s updated in %s", run["model_name"], card)
    return 0
