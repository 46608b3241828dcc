"""Command line: `embzoo embed | rerank | list | demo | convert | export | inspect | serve`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from embzoo.conversion.snapshot import SnapshotError
from embzoo.reranker import ACTIVATIONS, Ranker

DEFAULT_PEFT_BASE = "jinaai/jina-embeddings-v3-hf"  # the transformers-native model the adapters load onto
DEMO_QUERY = "Which animal is chasing something?"


def _read_inputs(args: argparse.Namespace) -> list[str]:
    """The TEXT / DOC arguments, or the lines of --file: every line one text, blank ones too, so that output row i is
    line i (a .jsonl file: strings or {"text": ...} objects, blank lines skipped)."""
    item = "DOC" if args.command == "rerank" else "TEXT"
    if args.file and args.texts:
        raise SystemExit(f"embzoo {args.command}: give {item} arguments or --file, not both")
    if not args.file:
        if not args.texts:
            raise SystemExit(f"embzoo {args.command}: nothing to {args.command}; give {item} arguments or --file F")
        return args.texts
    path = Path(args.file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SystemExit(f"embzoo {args.command}: cannot read --file {path}: {error.strerror or error}") from None
    if path.suffix != ".jsonl":
        return lines
    items = [json.loads(line) for line in lines if line.strip()]
    return [item["text"] if isinstance(item, dict) else item for item in items]


QUANTIZATION = {"8bit": "load_in_8bit", "nf4": "load_in_4bit", "fp8": "load_in_fp8"}  # --quantization → load flag


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """embzoo.load's keyword arguments from the model options every model command takes (--device, --dtype,
    --quantization)."""
    options: dict[str, Any] = {"device": args.device, "dtype": args.dtype}
    if args.quantization:
        options[QUANTIZATION[args.quantization]] = True
    return options


def _load(args: argparse.Namespace):
    import embzoo

    try:
        return embzoo.load(args.model, recipe=getattr(args, "recipe", None), **load_options(args))
    except (ValueError, SnapshotError) as error:  # a bad option or no such model: load's message, no traceback
        raise SystemExit(f"embzoo {args.command}: {error}") from None


def _embedder(args: argparse.Namespace):
    """The --model as an Embedder; SystemExit naming `embzoo rerank` for a reranker."""
    model = _load(args)
    if isinstance(model, Ranker):
        raise SystemExit(
            f"embzoo {args.command}: {model.name} is a reranker, not an embedding model; "
            f"score documents with `embzoo rerank --model {model.name} --query Q DOC ...`"
        )
    return model


def cmd_embed(args: argparse.Namespace) -> None:
    texts = _read_inputs(args)
    model = _embedder(args)
    kind = args.vectors or model.model.outputs[0]
    try:
        vectors = model.encode(
            texts,
            prompt_name=args.prompt_name,
            prompt=args.prompt,
            instruction=args.instruction,
            dimensions=args.dimensions,
            precision=args.precision,
            output=kind,
            max_active_dims=args.max_active_dims,
        )
    except ValueError as error:  # an option this model refuses (output kind, role, dimensions): the reason
        raise SystemExit(f"embzoo embed: {error}") from None
    if args.output and args.output.endswith(".npy"):
        if kind != "sentence":
            raise SystemExit(f"embzoo embed: {kind} vectors are one list per text; write them as JSON lines")
        np.save(args.output, vectors)
        print(f"wrote {vectors.shape} {vectors.dtype} to {args.output}", file=sys.stderr)
        return
    if args.output:
        with open(args.output, "w", encoding="utf-8") as sink:
            _write_jsonl(sink, texts, vectors, kind)
    else:
        _write_jsonl(sys.stdout, texts, vectors, kind)


JSONL_KEYS = {"sentence": "embedding", "sparse": "sparse", "multivector": "multivector"}


def _write_jsonl(sink: TextIO, texts: list[str], vectors: Any, kind: str) -> None:
    """One {"text", "embedding" | "sparse" ({token id: weight}) | "multivector" ([[...], ...])} line per text."""
    for text, vector in zip(texts, vectors, strict=True):
        value = vector if isinstance(vector, dict) else vector.tolist()
        sink.write(json.dumps({"text": text, JSONL_KEYS[kind]: value}) + "\n")


def cmd_rerank(args: argparse.Namespace) -> None:
    documents = _read_inputs(args)
    model = _load(args)
    common = dict(top_k=args.top_k, return_documents=True, batch_tokens=args.batch_tokens)
    try:
        if isinstance(model, Ranker):
            rows = model.rank(args.query, documents, instruction=args.instruction, activation=args.activation, **common)
            scored_by = f"activation {args.activation or model.activation}"
        else:  # an embedder ranks by its main output: cosine, sparse dot product or MaxSim (ColBERT)
            if args.instruction is not None or args.activation is not None:
                raise ValueError(f"{model.name} is an embedding model: it takes no --instruction or --activation")
            rows = model.rank(args.query, documents, **common)
            scored_by = f"{model.model.outputs[0]} scores"
    except ValueError as error:  # an option this model refuses (instruction, activation): the reason, no traceback
        raise SystemExit(f"embzoo rerank: {error}") from None
    if args.format == "jsonl":
        for rank, row in enumerate(rows, start=1):
            print(json.dumps({"rank": rank, **row}, ensure_ascii=False))
        return
    print(f"model: {model.name}  ({scored_by}, {model.device})")
    print(f"query: {args.query}")
    for rank, row in enumerate(rows, start=1):
        print(f"{rank:2d}. {row['score']:.4f}  [{row['index']}] {row['document']}")


def cmd_list(args: argparse.Namespace) -> None:
    from embzoo.catalog import CATALOG

    rows = [("model", "family", "pooling", "dim", "max len", "prompts")]
    for e in CATALOG.values():
        rows.append(
            (
                e.hub_id,
                e.family,
                "+".join(e.pooling) or ("per-token" if e.colbert else "sparse" if e.splade else "head"),
                str(e.dimension),
                str(e.max_seq_length),
                ",".join(e.prompts) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def cmd_demo(args: argparse.Namespace) -> None:
    sentences = resources.files("embzoo").joinpath("data/demo_sentences.txt").read_text("utf-8").splitlines()
    model = _embedder(args)
    rows = model.rank(args.query, sentences, top_k=args.top_k)  # cosine, sparse dot product or MaxSim
    print(f"model: {model.name}  ({model.dimension}-d {model.model.outputs[0]}, {model.device})")
    print(f"query: {args.query}")
    for rank, row in enumerate(rows, start=1):
        print(f"{rank:2d}. {row['score']:.4f}  {sentences[row['index']]}")


def cmd_convert(args: argparse.Namespace) -> None:
    from embzoo.conversion.convert import convert_lora_to_peft, convert_model

    try:
        if args.lora_to_peft:
            for folder in convert_lora_to_peft(args.src, Path(args.dst), base_model=args.base_model):
                print(folder)
            return
        print(convert_model(args.src, args.dst, dtype=args.dtype, recipe=args.recipe, revision=args.revision))
    except (ValueError, SnapshotError) as error:  # a bad option, path or checkpoint: the message, no traceback
        raise SystemExit(f"embzoo convert: {error}") from None


def cmd_inspect(args: argparse.Namespace) -> None:
    from embzoo.config import UnsupportedConfig
    from embzoo.conversion.inspect import format_inspection, inspect_checkpoint

    try:
        found = inspect_checkpoint(args.src)
    except (UnsupportedConfig, SnapshotError) as error:  # no family for it, or no model folder: the reason
        raise SystemExit(f"embzoo inspect: {error}") from None
    print(json.dumps(found.to_dict(), indent=2) if args.json else format_inspection(found))


def cmd_export(args: argparse.Namespace) -> None:
    from embzoo.conversion.export import export_sentence_transformers

    try:
        exported = export_sentence_transformers(args.model, Path(args.dst), recipe=args.recipe, dtype=args.dtype)
    except (
        ValueError,
        SnapshotError,
    ) as error:  # what the layout cannot express, or a checkpoint transformers cannot read
        raise SystemExit(f"embzoo export: {error}") from None
    print(exported.summary())


def served_adapters(specs: list[str], models: list[str]) -> dict[str, dict[str, str]]:
    """--adapter values ([MODEL:]NAME=FOLDER, MODEL one of the served `models`' names, needed when there are several)
    → {model: {adapter name: folder}}."""
    adapters: dict[str, dict[str, str]] = {}
    for spec in specs:
        left, _, folder = spec.partition("=")
        model, _, name = left.rpartition(":")
        model = model or (models[0] if len(models) == 1 else "")
        if not (name and folder and model):
            raise SystemExit(
                f"embzoo serve: --adapter {spec!r}: give NAME=FOLDER (a PEFT LoRA adapter folder or hub id), "
                f"or MODEL:NAME=FOLDER when serving several models ({', '.join(models)})"
            )
        if model not in models:
            raise SystemExit(f"embzoo serve: --adapter {spec!r}: no model named {model!r}; served: {', '.join(models)}")
        adapters.setdefault(model, {})[name] = folder
    return adapters


def served_models(specs: list[str], adapter_specs: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """--model values ([NAME=]hub id or folder) loaded with embzoo.load(**options), keyed by NAME (default: the
    value), each with its --adapter values as named adapters (requests select one by their `adapter` field)."""
    import embzoo

    paths: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (spec, "", spec)
        if not name or not path:
            raise SystemExit(f"embzoo serve: --model {spec!r}: give a hub id or folder, or NAME=hub id or folder")
        if name in paths:
            raise SystemExit(f"embzoo serve: two models named {name!r}; name them apart with --model NAME=...")
        paths[name] = path
    adapters = served_adapters(adapter_specs, list(paths))
    models: dict[str, Any] = {}
    for name, path in paths.items():
        try:
            models[name] = embzoo.load(path, **options, **({"adapters": adapters[name]} if name in adapters else {}))
        except (ValueError, OSError, SnapshotError) as error:  # a bad option, no such folder, an unreadable checkpoint
            raise SystemExit(f"embzoo serve: {path}: {error}") from None
    return models


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from embzoo.integrations.server import POSITIVE_SETTINGS, ServerSettings, create_app
    except ImportError as error:
        raise SystemExit(f"embzoo serve needs the serve extra: pip install 'embzoo[serve]' ({error})") from None
    limits = (*POSITIVE_SETTINGS, "max_wait_ms")
    given = {k: getattr(args, k) for k in limits if getattr(args, k) is not None}  # else ServerSettings' defaults
    try:
        settings = ServerSettings(api_key=args.api_key or os.environ.get("EMBZOO_API_KEY") or None, **given)
    except ValueError as error:
        raise SystemExit(f"embzoo serve: {error}") from None
    app = create_app(served_models(args.model, args.adapter, load_options(args)), settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def with_model_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every model-loading command takes (see load_options)."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--quantization",
        default=None,
        choices=list(QUANTIZATION),
        help="quantize the transformer blocks' Linear layers at load: bitsandbytes 8-bit or NF4 (embzoo[quant]), or "
        "FP8 (GPUs of compute capability 8.9+, e.g. H100)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embzoo", description="Text embeddings on packed token streams.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_model(p: argparse.ArgumentParser, *, reranker: bool = False) -> argparse.ArgumentParser:
        if reranker:
            p.add_argument(
                "--model",
                required=True,
                help="hub id or local folder of a reranker, or of an embedder (ColBERT, SPLADE…)",
            )
        else:
            p.add_argument("--model", default=None, help="hub id or local folder (default: bundled all-MiniLM-L6-v2)")
        return with_model_options(p)

    embed = with_model(sub.add_parser("embed", help="embed texts; JSON lines to stdout or .npy/.jsonl file"))
    embed.add_argument("texts", nargs="*", metavar="TEXT")
    embed.add_argument("--file", help="input: one text per line, or .jsonl of strings / {'text': ...}")
    embed.add_argument("--output", "-o", help="write here: .npy (array) or anything else (JSON lines)")
    embed.add_argument("--prompt-name", default=None, help="one of the model's prompts, e.g. query")
    embed.add_argument("--prompt", default=None, help="a literal prefix for every text")
    embed.add_argument("--instruction", default=None, help="a task description for the model's instruction template")
    embed.add_argument("--dimensions", type=int, default=None, help="Matryoshka: keep the first N dims")
    embed.add_argument("--precision", default="float32", choices=["float32", "binary", "ubinary"])
    embed.add_argument(
        "--vectors",
        default=None,
        choices=["sentence", "sparse", "multivector"],
        help="which output (default: the model's main one; ColBERT: multivector, SPLADE: sparse)",
    )
    embed.add_argument("--max-active-dims", type=int, default=None, help="sparse: keep each text's N heaviest weights")
    embed.set_defaults(func=cmd_embed)

    rerank = sub.add_parser(
        "rerank",
        help="documents sorted by relevance to a query (a reranker's, or an embedder's scores); JSON lines or a table",
    )
    rerank = with_model(rerank, reranker=True)
    rerank.set_defaults(func=cmd_rerank)
    rerank.add_argument("texts", nargs="*", metavar="DOC")
    rerank.add_argument("--query", required=True)
    rerank.add_argument("--file", help="documents: one per line, or .jsonl of strings / {'text': ...}")
    rerank.add_argument("--top-k", type=int, default=None, help="print the best K documents (default: all)")
    rerank.add_argument("--instruction", default=None, help="a task instruction, for rerankers that take one")
    rerank.add_argument("--activation", default=None, choices=list(ACTIVATIONS), help="default: the model card's")
    rerank.add_argument("--format", default="jsonl", choices=["jsonl", "table"])
    rerank.add_argument("--recipe", default=None, help="catalog id whose recipe applies to a local copy (--model)")
    rerank.add_argument("--batch-tokens", type=int, default=None, help="tokens per forward batch (default: by device)")

    sub.add_parser("list", help="catalogued checkpoints").set_defaults(func=cmd_list)

    demo = with_model(sub.add_parser("demo", help="semantic search over a handful of shipped sentences"))
    demo.add_argument("--query", default=DEMO_QUERY)
    demo.add_argument("--top-k", type=int, default=5)
    demo.set_defaults(func=cmd_demo)

    convert = sub.add_parser(
        "convert", help="a checkpoint as an embzoo folder (embzoo.load reloads it bit-exactly), or task LoRA as PEFT"
    )
    convert.add_argument("src", metavar="SRC", help="hub id or local folder of a checkpoint embzoo.load takes")
    convert.add_argument("dst", metavar="DST", help="new folder to write")
    convert.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    convert.add_argument("--recipe", default=None, help="catalog id whose recipe applies to a local copy (SRC)")
    convert.add_argument("--revision", default=None, help="Hub revision of SRC")
    convert.add_argument(
        "--lora-to-peft",
        action="store_true",
        help="instead: task LoRA (jina-embeddings-v3) → one PEFT LoRA folder per task under DST, for the -hf model",
    )
    convert.add_argument(
        "--base-model", default=DEFAULT_PEFT_BASE, help="with --lora-to-peft: base_model_name_or_path of the adapters"
    )
    convert.set_defaults(func=cmd_convert)

    inspect = sub.add_parser(
        "inspect",
        help="how embzoo reads a checkpoint (for porting): family, ArchConfig, pipeline, the rule claiming each tensor",
    )
    inspect.add_argument("src", metavar="SRC", help="hub id or local folder")
    inspect.add_argument("--json", action="store_true", help="print everything as one JSON object")
    inspect.set_defaults(func=cmd_inspect)

    export = sub.add_parser("export", help="write an embedder in another library's layout (sentence-transformers)")
    export.add_argument("dst", metavar="DST", help="new folder to write")
    export.add_argument(
        "--format",
        required=True,
        choices=["sentence-transformers"],
        help="sentence-transformers: the legacy folder layout that sentence-transformers, TEI and vLLM read",
    )
    export.add_argument("--model", default=None, help="hub id or local folder (default: bundled all-MiniLM-L6-v2)")
    export.add_argument("--recipe", default=None, help="catalog id whose recipe applies to a local copy (--model)")
    export.add_argument(
        "--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="default: the checkpoint's"
    )
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server: /v1/embeddings, /v1/rerank, /v1/score")
    serve.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]M",
        help="hub id or local folder, served as NAME (default: M itself); repeat for more models",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    with_model_options(serve)
    serve.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[MODEL:]NAME=FOLDER",
        help="a PEFT LoRA adapter (folder or hub id) kept beside MODEL's weights, selected by requests' `adapter` "
        "field; MODEL (a served name) is needed when serving several models; repeat for more",
    )
    serve.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` (default: $EMBZOO_API_KEY)")
    serve.add_argument("--max-batch-tokens", type=int, help="tokens per merged forward (default 16384)")
    serve.add_argument("--max-wait-ms", type=float, help="how long a request waits for others to batch (default 5)")
    serve.add_argument("--max-queue", type=int, help="queued requests per model before 429 (default 1024)")
    serve.add_argument("--max-inputs-per-request", type=int, help="inputs per request before 413 (default 2048)")
    serve.add_argument("--max-queue-tokens", type=int, help="queued tokens per model before 429 (default 1048576)")
    serve.add_argument("--max-request-bytes", type=int, help="request body bytes before 413 (default 8388608)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
