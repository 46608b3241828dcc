"""Push a model folder and its card to the Hugging Face Hub.

    python hub_upload.py SRC REPO_ID [--recipe HUB_ID] [--base-model HUB_ID] [--tag T ...] [--private] [--dry-run]

SRC is checked first: embzoo.load(SRC, device="cpu", dtype="bfloat16") must succeed (with --recipe, that catalog
recipe applied). SRC/README.md then gets the card metadata (YAML front matter): library_name embzoo, pipeline_tag by
what load returned (sentence-similarity for an Embedder, text-ranking for a reranker), base_model (--base-model, else
--recipe, else the recipe an embzoo folder was converted with; omitted without one), tags. An existing README keeps
its body and its other metadata; without one, the body is the base model's catalog card (its usage loading REPO_ID
with that recipe; for an embzoo folder, what it is), else a short generated one.
Then the repository is created (exist_ok) and SRC uploaded in one commit. --dry-run prints the files that would be
uploaded (with sizes) and the README front matter, and writes and uploads nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

import embzoo
from embzoo.api import Embedder
from embzoo.catalog import lookup
from embzoo.model_cards import card_body, card_metadata, front_matter, split_front_matter
from embzoo.reranker import Ranker

README = "README.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hub_upload.py", description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="the model folder (a Hub-layout snapshot embzoo.load reads)")
    parser.add_argument("repo_id", help="the Hub repository to create or update, e.g. user/my-model")
    parser.add_argument("--recipe", help="catalog hub id whose recipe SRC needs (a copy of that model)")
    parser.add_argument("--base-model", help="the Hub id SRC derives from (card metadata; default: --recipe)")
    parser.add_argument("--tag", action="append", default=[], help="an extra card tag (repeatable)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved `hf auth login` token)")
    parser.add_argument("--commit-message", help="default: 'Upload SRC's name with embzoo hub_upload.py'")
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded; touch nothing")
    return parser.parse_args(argv)


def validate(src: Path, recipe: str | None) -> Embedder | Ranker:
    """The Embedder or Ranker embzoo loads from src on the CPU; SystemExit naming the problem if it cannot."""
    if not src.is_dir():
        raise SystemExit(f"{src}: not a folder; pass the model folder to upload")
    try:
        return embzoo.load(src, device="cpu", dtype="bfloat16", recipe=recipe)  # half the memory of float32
    except Exception as err:  # any reason it does not load is a reason not to publish it
        raise SystemExit(f"{src}: embzoo cannot load it, so it is not uploaded: {type(err).__name__}: {err}") from err


def readme_card(
    src: Path, repo_id: str, model: Embedder | Ranker, base_model: str | None, tags: list[str]
) -> tuple[dict[str, Any], str]:
    """(metadata, body) of SRC's README with the card metadata merged in: library_name, pipeline_tag and base_model
    replaced, tags added to its own; license and language from the base model's catalog card where the README gives
    none. The body: the README's own, else the base model's catalog card, else a short usage note."""
    path = src / README
    existing, body = split_front_matter(path.read_text(encoding="utf-8")) if path.is_file() else ({}, "")
    entry = lookup(base_model) if base_model else None
    metadata = {**existing, "library_name": "embzoo"}
    metadata["pipeline_tag"] = "text-ranking" if isinstance(model, Ranker) else "sentence-similarity"
    if base_model:
        metadata["base_model"] = base_model
    catalog = card_metadata(entry) if entry else {}
    for key in ("license", "language"):
        if key in catalog:
            metadata.setdefault(key, catalog[key])
    own = existing.get("tags") or []
    own = [own] if isinstance(own, str) else list(own)
    metadata["tags"] = list(dict.fromkeys([*own, "embzoo", *catalog.get("tags", []), *tags]))
    if not path.is_file():
        converted = model.origin is not None and model.origin.snapshot.converted is not None
        body = card_body(entry, repo_id=repo_id, converted=converted) if entry else _plain_body(repo_id, model)
    return metadata, body if body.startswith("\n") else "\n" + body


def _plain_body(repo_id: str, model: Embedder | Ranker) -> str:
    """A card body for a model without a catalogued base: what it is and how embzoo loads it."""
    if isinstance(model, Ranker):
        what, use = "reranker", 'm.rank("what is rope?", ["a document", "another document"], top_k=1)'
    else:
        what, use = "embedding model", 'm.encode(["what is rope?"])'
    return (
        f"\n# {repo_id}\n\nA {what} uploaded with embzoo's `hub_upload.py`.\n\n"
        f'```python\nimport embzoo\n\nm = embzoo.load("{repo_id}")\n{use}\n```\n'
    )


def upload_plan(src: Path, readme: str) -> list[tuple[str, int]]:
    """(path in the repository, size in bytes) of each file upload_folder sends, README.md as it will be written;
    the same files as upload_folder picks (its default ignore patterns: .git, .cache/huggingface)."""
    files = {p.relative_to(src).as_posix(): p.stat().st_size for p in sorted(src.rglob("*")) if p.is_file()}
    files[README] = len(readme.encode("utf-8"))
    return [(name, files[name]) for name in filter_repo_objects(sorted(files), ignore_patterns=DEFAULT_IGNORE_PATTERNS)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    src: Path = args.src
    model = validate(src, args.recipe)
    stored = model.origin.recipe if model.origin is not None else None  # an embzoo folder's own recipe
    metadata, body = readme_card(src, args.repo_id, model, args.base_model or args.recipe or stored, args.tag)
    readme = front_matter(metadata) + body
    plan = upload_plan(src, readme)
    if args.dry_run:
        print(
            f"dry run: would create {args.repo_id} (private: {args.private}, exist_ok) and upload {src} in one commit:"
        )
        for name, size in plan:
            print(f"  {name}  {size} bytes" + ("  (card metadata written by hub_upload)" if name == README else ""))
        print(f"  total: {len(plan)} files, {sum(size for _, size in plan)} bytes")
        print(f"{README} front matter:\n{front_matter(metadata)}", end="")
        return 0
    (src / README).write_text(readme, encoding="utf-8")
    api = HfApi()
    message = args.commit_message or f"Upload {src.resolve().name} with embzoo hub_upload.py"
    try:
        url = api.create_repo(args.repo_id, exist_ok=True, private=args.private, token=args.token)
        api.upload_folder(folder_path=src, repo_id=args.repo_id, commit_message=message, token=args.token)
    except HfHubHTTPError as err:
        raise SystemExit(f"{args.repo_id}: the Hub refused the upload: {err}") from err
    print(f"uploaded {len(plan)} files to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
