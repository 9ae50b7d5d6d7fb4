"""Model cards, model-index results and Hub uploads (with an honest dry run).

Cards are rendered from the templates in ``model_cards/`` with huggingface_hub's ``ModelCard`` /
``ModelCardData`` / ``EvalResult``; results go into the card's ``model-index`` so the Hub shows them.

CLI (push a folder that was saved earlier, e.g. offline)::

    python -m modeling_georsclip.hub push OUTPUT_DIR --repo-id OWNER/NAME [--repo-type model] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from .io import write_text_atomic
from .log import get_logger
from .resources import card_template

logger = get_logger(__name__)

RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"

# Hub widget examples: real remote-sensing images (public repositories, see samples/rs-samples/SOURCES.md)
# with remote-sensing class names.
WIDGET_EXAMPLES = [
    {
        "src": "https://raw.githubusercontent.com/ChenDelong1999/RemoteCLIP/main/assets/airport.jpg",
        "candidate_labels": "airport, farmland, forest, harbor, residential area, stadium",
        "example_title": "Airport (RemoteCLIP demo image)",
    },
    {
        "src": "https://raw.githubusercontent.com/open-mmlab/mmrotate/main/demo/dota_demo.jpg",
        "candidate_labels": "harbor, parking lot, airport, desert, farmland, storage tanks",
        "example_title": "DOTA scene (mmrotate demo image)",
    },
]

RESULT_KEYS = ("task_type", "dataset_name", "dataset_type", "metric_type", "metric_value")


class PushError(RuntimeError):
    """Raised when an upload cannot happen (no token, offline, no network); the folder stays saved."""


def _eval_result(result: dict[str, Any]) -> EvalResult:
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise ValueError(f"eval result {result!r} lacks keys {missing}")
    allowed = {"task_name", "dataset_split", "dataset_config", "metric_name", "metric_args", *RESULT_KEYS}
    unknown = set(result) - allowed
    if unknown:
        raise ValueError(f"eval result has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return EvalResult(**{k: v for k, v in result.items() if v is not None})


def results_table(eval_results: Sequence[EvalResult]) -> str:
    """Markdown table of model-index results (task, dataset, split, metric, value)."""
    if not eval_results:
        return "No evaluation results yet. Run `python evaluate.py --model THIS_FOLDER ...` to add them."
    lines = ["| task | dataset | split | metric | value |", "|---|---|---|---|---|"]
    for r in eval_results:
        value = f"{r.metric_value:.2f}" if isinstance(r.metric_value, float) else r.metric_value
        lines.append(
            f"| {r.task_name or r.task_type} | {r.dataset_name} | {r.dataset_split or ''} | "
            f"{r.metric_name or r.metric_type} | {value} |"
        )
    return "\n".join(lines)


def hub_model_id(name: str | None) -> str | None:
    """``name`` if it can be a Hub model id (``owner/name`` or ``name``), else None (local paths).

    ``base_model`` in a card's metadata must be a Hub id; a local folder goes into the provenance instead.
    """
    if not name or Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    return name


# A local absolute path inside a value: /a/b, ~/a, C:\\a. Not URLs (hf://, https://: the "/" follows ":" or "/")
# and not relative paths or "x / y" text (a lone slash has no name to keep).
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~\\-])(?:~|[A-Za-z]:)?[/\\][^\s`'\"|,;()\[\]{}<>]*")


def _path_name(match: re.Match) -> str:
    name = re.split(r"[/\\]", match.group(0).rstrip("/\\"))[-1]
    return name or match.group(0)


def publishable(value: Any) -> Any:
    """``value`` with every local absolute path replaced by its last component (the folder or file name).

    A card is written to be published: ``/home/me/outputs/main/work/base`` means nothing on the Hub and tells
    readers about the author's disk, while ``base`` still names the folder. Walks dicts, lists and strings.
    """
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(_path_name, value)
    if isinstance(value, dict):
        return {publishable(k): publishable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(publishable(v) for v in value)
    if isinstance(value, os.PathLike):
        return publishable(os.fspath(value))
    return value


def render_model_card(
    model_name: str,
    *,
    base_model: str | None = None,
    license: str = "mit",
    datasets: Sequence[str] | None = None,
    eval_results: Sequence[dict[str, Any]] | None = None,
    provenance: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    description: str = "",
    repo_id: str | None = None,
) -> ModelCard:
    """Render the model card template: Hub metadata (pipeline tag, widget, model-index) plus body."""
    results = [_eval_result(r) for r in publishable(list(eval_results or []))]
    if base_model and hub_model_id(str(base_model)) is None:  # a local folder: its name, in the provenance
        provenance = {**(provenance or {}), "base model (local)": base_model}
        base_model = None
    # nothing local and absolute reaches a card: names of local folders stay, paths do not
    model_name, description, provenance, recipe = map(publishable, (model_name, description, provenance, recipe))
    datasets = [hub_model_id(str(d)) or Path(str(d)).name for d in datasets or []]
    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=["remote-sensing", "earth-observation", "clip", "georsclip", "vision-language"],
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        model_name=model_name,
        eval_results=results or None,
        widget=WIDGET_EXAMPLES,
    )
    return ModelCard.from_template(
        data,
        template_path=str(card_template("model_card.md")),
        model_name=model_name,
        repo_id=repo_id or model_name,
        description=description
        or "A CLIP model for remote-sensing imagery (GeoRSCLIP family: CLIP fine-tuned on RS5M).",
        results_table=results_table(results),
        provenance=provenance or {},
        recipe=recipe or {},
    )


def write_model_card(folder: str | os.PathLike, model_name: str, **kwargs: Any) -> Path:
    """Render the model card and write it atomically to ``folder/README.md``."""
    path = Path(folder) / "README.md"
    write_text_atomic(path, str(render_model_card(model_name, **kwargs)))
    return path


def _same_result(a: EvalResult, b: EvalResult) -> bool:
    fields = ("task_type", "dataset_type", "dataset_name", "dataset_split", "metric_type", "metric_name")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def update_model_index(folder: str | os.PathLike, results: Iterable[dict[str, Any]]) -> ModelCard:
    """Merge ``results`` into ``folder/README.md``'s model-index (replacing same task/dataset/metric)
    and refresh the results table in the card body. Creates a minimal card if there is none."""
    path = Path(folder) / "README.md"
    if path.exists():
        card = ModelCard.load(path)
    else:
        card = render_model_card(Path(folder).name)
    data = card.data
    merged = list(data.eval_results or [])
    for new in map(_eval_result, results):
        merged = [old for old in merged if not _same_result(old, new)] + [new]
    data.eval_results = merged
    if not data.model_name:
        data.model_name = Path(folder).name
    text = card.text
    table = results_table(merged)
    if RESULTS_START in text and RESULTS_END in text:
        pattern = re.compile(re.escape(RESULTS_START) + ".*?" + re.escape(RESULTS_END), re.S)
        text = pattern.sub(lambda _: f"{RESULTS_START}\n{table}\n{RESULTS_END}", text)
    else:
        text += f"\n## Results\n\n{RESULTS_START}\n{table}\n{RESULTS_END}\n"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")
    write_text_atomic(path, str(card))
    return card


def upload_plan(folder: str | os.PathLike, ignore_patterns: Sequence[str] = ()) -> list[tuple[str, int]]:
    """The files ``HfApi.upload_folder`` would send, as (relative path, bytes), sorted.

    huggingface_hub has no dry run for uploads; this applies the same filter its planner uses
    (``filter_repo_objects`` with ``DEFAULT_IGNORE_PATTERNS``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"folder to upload does not exist: {root}")
    relpaths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    kept = filter_repo_objects(relpaths, ignore_patterns=[*ignore_patterns, *DEFAULT_IGNORE_PATTERNS])
    return [(rel, (root / rel).stat().st_size) for rel in kept]


def format_plan(plan: Sequence[tuple[str, int]], repo_id: str, repo_type: str, message: str) -> str:
    """Human-readable dry-run listing: files, sizes, total and commit message."""
    total = sum(size for _, size in plan)
    lines = [f"dry run: would upload {len(plan)} files ({total / 1e6:.2f} MB) to {repo_type} repo {repo_id}"]
    lines.append(f"commit message: {message}")
    lines += [f"  {size:>12,d}  {rel}" for rel, size in plan]
    return "\n".join(lines)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str = "model",
    commit_message: str = "Upload with georsclip",
    dry_run: bool = False,
    private: bool = False,
    token: str | None = None,
    ignore_patterns: Sequence[str] = (),
    large_folder: bool = False,
) -> list[tuple[str, int]]:
    """Upload ``folder`` to ``repo_id`` (creating the repo); with ``dry_run`` only list what would go.

    ``large_folder`` uses ``HfApi.upload_large_folder`` (resumable, many commits: for dataset shards)
    where the installed huggingface_hub has it, else ``upload_folder``.

    Returns the upload plan. Raises ``PushError`` with a clear message when there is no token, the Hub is
    unreachable or offline mode is on; the local folder is never modified.
    """
    plan = upload_plan(folder, ignore_patterns)
    if dry_run:
        logger.info(format_plan(plan, repo_id, repo_type, commit_message))
        return plan
    api = HfApi(token=token)
    hint = f"the folder is saved at {folder}; push it later with: python -m modeling_georsclip.hub push {folder} --repo-id {repo_id}"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        raise PushError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set; {hint}")
    if not (token or api.token):
        raise PushError(f"cannot push to {repo_id}: no Hugging Face token (run `hf auth login` or set HF_TOKEN); {hint}")
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                        space_sdk="gradio" if repo_type == "space" else None)  # the Hub requires an SDK for Spaces
        large = getattr(api, "upload_large_folder", None) if large_folder else None
        if large is not None:
            large(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type,
                  ignore_patterns=list(ignore_patterns) or None)
            logger.info("pushed %d files to https://huggingface.co/%s", len(plan), repo_id)
            return plan
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=repo_type,
            commit_message=commit_message,
            ignore_patterns=list(ignore_patterns) or None,
        )
    except Exception as err:  # network, auth and offline errors all end the same way for the user
        raise PushError(f"cannot push to {repo_id}: {type(err).__name__}: {err}; {hint}") from err
    logger.info("pushed %d files to https://huggingface.co/%s", len(plan), repo_id)
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeling_georsclip.hub", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="upload an existing output folder")
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--repo-type", default="model", choices=["model", "dataset", "space"])
    push.add_argument("--commit-message", default="Upload with georsclip")
    push.add_argument("--private", action="store_true")
    push.add_argument("--dry-run", action="store_true", help="list files, sizes and commit message; upload nothing")
    args = parser.parse_args(argv)
    try:
        plan = push_folder(
            args.folder, args.repo_id, repo_type=args.repo_type, commit_message=args.commit_message,
            dry_run=args.dry_run, private=args.private,
        )
    except (PushError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not args.dry_run:
        print(f"pushed {len(plan)} files to {args.repo_id}")
    return 0


def push_main(argv: Sequence[str] | None = None) -> int:
    """``georsclip-push FOLDER --repo-id ...``: the console-script form of ``python -m modeling_georsclip.hub push``."""
    return main(["push", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
