"""Model cards: one Markdown card per catalog entry, rendered from the entry by one template (TEMPLATE).

A card is YAML front matter (Hub metadata) and a body: what the model is, its use with embzoo and with
sentence-transformers, its facts (pooling, dimensions, Matryoshka, max length, license), its prompts
byte-exact, and the tests that check its family against a reference. The cards committed in model_cards/
are regenerated with `python -m embzoo.model_cards` (or `make cards`); tests/test_model_cards.py fails when
they differ from what the catalog renders.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from string import Template
from typing import Any

import yaml

from embzoo.catalog import CATALOG, DEFAULT_MODEL, CatalogEntry
from embzoo.loading_rerankers import KINDS

REGENERATE = "python -m embzoo.model_cards"  # (or `make cards`): rewrites model_cards/ from the catalog
CARDS_DIR = Path("model_cards")

TEMPLATE = Template("""\
# $title

$summary

$source

## Use with embzoo

```python
$embzoo_usage
```

$embzoo_notes

## Use with sentence-transformers

$st_usage

## Use with the HTTP server

$server_usage

## Model facts

$facts

## Prompts

$prompts

## Parity evidence

$evidence
""")

EXAMPLE_QUERY = "what is rope?"
EXAMPLE_DOCS = ["Rotary position embeddings rotate query and key vectors.", "A rope is a length of cord."]
EXAMPLE_INSTRUCTION = "Given a question, retrieve passages that answer it"
MATRYOSHKA_EXAMPLE = 256  # a size every catalogued Matryoshka model was trained at
HYBRID_MODELS = ("BAAI/bge-m3",)  # dense, sparse and ColBERT outputs from one pass (its extra head files)
# families whose Hub repositories run their own modeling code under sentence-transformers (trust_remote_code)
REMOTE_CODE_FAMILIES = ("nomic_bert", "gte", "jina_bert", "jina_embeddings_v3", "jina_xlm_roberta", "nv_embed")
REMOTE_CODE_MODELS = ("Alibaba-NLP/gte-Qwen2-1.5B-instruct", "Alibaba-NLP/gte-Qwen2-7B-instruct")
# the models sentence-transformers does not run, and what their reference is instead
CONVERTED_ST = (
    "This repository is an embzoo folder (config.json model_type `embzoo`), which sentence-transformers does not "
    "read; `embzoo export DST --format sentence-transformers --model {id}` writes a copy it reads."
)
NOT_SENTENCE_TRANSFORMERS = {
    "llm2vec": "sentence-transformers does not load LLM2Vec models; their reference is the `llm2vec` package "
    "(`LLM2Vec.from_pretrained`), which builds the inputs as embzoo's recipe does.",
    "colbert": "sentence-transformers 6 loads PyLate and Stanford ColBERT checkpoints as a MultiVectorEncoder "
    '(`from sentence_transformers import MultiVectorEncoder; MultiVectorEncoder("$id")`, then `encode_query` / '
    "`encode_document`; tests/test_colbert.py compares embzoo with it); the reference is PyLate: "
    '`from pylate import models; models.ColBERT(model_name_or_path="$id")`.',
    "generative": "sentence-transformers' CrossEncoder does not run this generative checkpoint as published; its "
    "reference is the code on its Hub card.",
    "listwise": "sentence-transformers does not run this listwise reranker; its reference is the repository's own "
    'code: `AutoModel.from_pretrained("$id", trust_remote_code=True).rerank(query, documents)`.',
}

# family → (test file, the independent reference it compares the backbone and heads against)
FAMILY_EVIDENCE = {
    "bert": (
        "tests/families/test_bert.py",
        "transformers' BertModel / RobertaModel / XLMRobertaModel and their `*ForSequenceClassification` heads",
    ),
    "nomic_bert": (
        "tests/families/test_nomic_bert.py",
        "transformers' NomicBertModel / "
        "NomicBertForSequenceClassification, with the remote code's biases, partial rotary and plain MLP "
        "written into the test",
    ),
    "gte": (
        "tests/families/test_gte.py",
        "transformers' GteModel (authors' and transformers' layouts) and the authors' forward written out in the test",
    ),
    "modernbert": (
        "tests/families/test_modernbert.py",
        "transformers' ModernBertModel / ModernBertForSequenceClassification / ModernBertForMaskedLM",
    ),
    "jina_bert": (
        "tests/families/test_jina_bert.py",
        "a padded fp32 reference written in the test from the spec (transformers has no jina-bert-v2)",
    ),
    "jina_embeddings_v3": (
        "tests/families/test_jina_embeddings_v3.py",
        "transformers' JinaEmbeddingsV3Model with each task's LoRA merged as the spec states",
    ),
    "jina_xlm_roberta": (
        "tests/families/test_jina_xlm_roberta.py",
        "transformers' XLMRobertaForSequenceClassification, its weights renamed into Jina's flash layout",
    ),
    "llama": (
        "tests/families/test_llama.py",
        "transformers' LlamaModel / MistralModel / Qwen2Model / Qwen3Model and their `*ForCausalLM` checkpoints",
    ),
    "gemma": ("tests/families/test_gemma.py", "transformers' GemmaModel / GemmaForCausalLM"),
    "gemma2": ("tests/families/test_gemma2.py", "transformers' Gemma2Model / Gemma3TextModel / Gemma3ForCausalLM"),
    "nv_embed": (
        "tests/families/test_nv_embed.py",
        "transformers' MistralModel run bidirectionally and a latent-attention pooler written from the remote code",
    ),
}
# hub id → (test file, what it checks) beyond the family's backbone
MODEL_EVIDENCE = {
    DEFAULT_MODEL: ("tests/test_minilm.py", "the real weights end to end against sentence-transformers"),
    "BAAI/bge-m3": (
        "tests/test_bge_m3.py",
        "dense, sparse and ColBERT outputs and compute_score against a reference "
        "written from FlagEmbedding's inference code",
    ),
    "google/embeddinggemma-300m": (
        "tests/test_llm_embedders.py",
        "an EmbeddingGemma-like folder end to end against sentence-transformers (prompts, two Dense layers, Normalize)",
    ),
    **{
        f"Qwen/Qwen3-Embedding-{size}": (
            "tests/test_llm_embedders.py",
            "a Qwen3-Embedding-like folder end to end against sentence-transformers (causal, last token, Matryoshka)",
        )
        for size in ("0.6B", "4B", "8B")
    },
    **{
        f"McGill-NLP/LLM2Vec-{base}-mntp-supervised": (
            "tests/conversion/test_peft.py",
            "LoRA adapter folders merged at load against peft",
        )
        for base in ("Mistral-7B-Instruct-v2", "Meta-Llama-3-8B-Instruct")
    },
}
SENTENCE_EVIDENCE = (
    "tests/test_encode.py",
    "pooling, prompts, Dense, Normalize, Matryoshka truncation and quantized precisions against sentence-transformers",
)
KIND_EVIDENCE = {
    "cross-encoder": (
        "tests/test_rerank.py",
        "scores against transformers' `*ForSequenceClassification` and sentence-transformers' CrossEncoder",
    ),
    "yes/no": (
        "tests/test_yes_no_rerankers.py",
        "the one-row score against transformers' CausalLM full-vocabulary "
        "logits on inputs built by references written from each model's code; the templates byte-exact",
    ),
    "listwise": (
        "tests/test_jina_reranker_v3.py",
        "scores against a reference written from the model's `rerank` code on transformers' Qwen3",
    ),
    "colbert": (
        "tests/test_colbert.py",
        "a reference written from PyLate's tokenize / encode on transformers' "
        "BertModel (markers, [MASK] expansion, skiplist, MaxSim)",
    ),
    "splade": (
        "tests/test_splade.py",
        "transformers' BertForMaskedLM logits → log(1 + relu) → max (or sum) over tokens, in float64",
    ),
    "instruction": (
        "tests/test_instructions.py",
        "byte-exact templates, EOS appending and the tokens kept out of "
        "the pool, applied to a local folder through the catalog recipe",
    ),
    "matryoshka layer norm": (
        "tests/test_encode.py",
        "the layer norm before Matryoshka truncation (test_matryoshka_layer_norm_before_truncation)",
    ),
    "task lora": (
        "tests/families/test_jina_embeddings_v3_peft.py",
        "encode(task=...) against transformers' model with peft loading that task's adapter",
    ),
}


def card_filename(hub_id: str) -> str:
    """The card's file name: the hub id with "/" as "__" (BAAI/bge-m3 → BAAI__bge-m3.md)."""
    return hub_id.replace("/", "__") + ".md"


def kind(entry: CatalogEntry) -> str:
    """What the entry is: "embedder", "hybrid", "colbert", "splade", "cross-encoder", "yes/no" or "listwise"."""
    if entry.reranker:
        return "listwise" if entry.reranker == "jina_v3" else "yes/no"
    if not entry.pooling and entry.dimension == 1:
        return "cross-encoder"
    if entry.colbert or entry.splade:
        return "colbert" if entry.colbert else "splade"
    return "hybrid" if entry.hub_id in HYBRID_MODELS else "embedder"


def is_reranker(entry: CatalogEntry) -> bool:
    """Whether load() returns a reranker (one score per pair) for the entry."""
    return kind(entry) in ("cross-encoder", "yes/no", "listwise")


def is_matryoshka(entry: CatalogEntry) -> bool:
    """The catalog says so: nomic v1.5's layer-norm recipe, or "Matryoshka" / "MRL" in its summary."""
    return entry.matryoshka_layer_norm or re.search(r"\b(Matryoshka|MRL)\b", entry.summary) is not None


def _st_support(entry: CatalogEntry) -> str:
    """How sentence-transformers runs the model: "remote" (trust_remote_code) or "plain", else a key of
    NOT_SENTENCE_TRANSFORMERS (it does not)."""
    k = kind(entry)
    if k in ("colbert", "listwise"):
        return k
    if k == "yes/no":
        return "generative"
    if entry.instruction_mask == "text_tokens":
        return "llm2vec"
    remote = entry.family in REMOTE_CODE_FAMILIES or entry.hub_id in REMOTE_CODE_MODELS
    return "remote" if remote else "plain"


def card_metadata(entry: CatalogEntry) -> dict[str, Any]:
    """The card's Hub metadata (its YAML front matter)."""
    k = kind(entry)
    languages = [lang for lang in entry.languages.split(",") if lang != "code"]
    tags = ["embzoo", entry.family]
    if _st_support(entry) in ("remote", "plain"):
        tags.append("sentence-transformers")
    tags += {
        "cross-encoder": ["cross-encoder", "reranker"],
        "yes/no": ["reranker"],
        "listwise": ["reranker"],
        "colbert": ["colbert"],
        "splade": ["sparse-encoder", "splade"],
        "hybrid": ["sparse", "colbert"],
    }.get(k, [])
    if is_matryoshka(entry):
        tags.append("matryoshka")
    if "code" in entry.languages.split(","):
        tags.append("code")
    return {
        "library_name": "embzoo",
        "pipeline_tag": "text-ranking" if is_reranker(entry) else "sentence-similarity",
        "base_model": entry.hub_id,
        "license": entry.license,
        "language": languages,
        "tags": tags,
    }


def front_matter(metadata: dict[str, Any]) -> str:
    """metadata as a YAML block between "---" lines, keys in the given order."""
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n"


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a Markdown file; ({}, text) when it has no YAML front matter."""
    match = re.match(r"---\r?\n(.*?)^---[ \t]*(?:\r?\n|\Z)", text, re.DOTALL | re.MULTILINE)
    if match is None:
        return {}, text
    metadata = yaml.safe_load(match.group(1)) or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"the YAML front matter is a {type(metadata).__name__}, not a mapping of keys to values")
    return metadata, text[match.end() :]


def quoted(value: str | list[str]) -> str:
    """A string (or list of them) as a double-quoted literal, valid in Python and JSON (newlines as \\n, Unicode
    kept)."""
    return json.dumps(value, ensure_ascii=False)


def literal(text: str) -> str:
    """text as a Markdown code span of its string literal (quoted): trailing spaces and newlines stay visible."""
    value = quoted(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    return f"{fence}{value}{fence}"


def _load_lines(var: str, entry: CatalogEntry, repo_id: str | None) -> list[str]:
    if repo_id is not None:
        return [
            f"{var} = embzoo.load({quoted(repo_id)}, recipe={quoted(entry.hub_id)})  # the recipe of its base model"
        ]
    local = f'embzoo.load("/path/to/copy", recipe={quoted(entry.hub_id)})'
    return [f"{var} = embzoo.load({quoted(entry.hub_id)})", f"# a local copy: {var} = {local}"]


def _task(entry: CatalogEntry, word: str) -> str:
    """The first task name containing word (else the first task)."""
    return next((t for t in entry.task_instructions if word in t), next(iter(entry.task_instructions)))


def _embedder_usage(entry: CatalogEntry) -> list[str]:
    k, q, docs = kind(entry), quoted(EXAMPLE_QUERY), "docs"
    if k == "hybrid":
        return [
            f'out = m.encode({docs}, output=["sentence", "sparse", "multivector"])  # one pass, three outputs',
            f"m.compute_score([({q}, {docs}[0])])  # dense, sparse, colbert and their weighted sums",
        ]
    if k == "colbert":
        return [
            f"q = m.encode_query([{q}])  # one [query_length, {entry.dimension}] array per query",
            f"d = m.encode_document({docs})  # one [n_i, {entry.dimension}] array per document",
            f"m.rank({q}, {docs}, top_k=2)  # MaxSim, summed over query tokens",
        ]
    if k == "splade":
        return [
            f'w = m.encode({docs}, output="sparse")  # one {{token id: weight}} dict per text',
            "m.decode(w[0], top_k=10)  # [(token, weight)], heaviest first",
            f"m.rank({q}, {docs}, top_k=2)  # dot product",
        ]
    if entry.task_instructions:
        lines = [
            f"q = m.encode([{q}], task={quoted(_task(entry, 'query'))})",
            f"d = m.encode({docs}, task={quoted(_task(entry, 'passage'))})",
        ]
    elif entry.instruction_template:
        lines = [
            f"q = m.encode([{q}], instruction={quoted(EXAMPLE_INSTRUCTION)})",
            f"q = m.encode_query([{q}])  # the default instruction (see Prompts)",
            f"d = m.encode_document({docs})",
        ]
    elif "query" in entry.prompts:
        document = "document" if "document" in entry.prompts else "passage" if "passage" in entry.prompts else None
        lines = [f"q = m.encode_query([{q}])"]
        lines.append(
            f"d = m.encode({docs}, prompt_name={quoted(document)})"
            if document == "passage"
            else f"d = m.encode_document({docs})"
        )
        lines += [f"m.encode({docs}, prompt_name={quoted(n)})" for n in entry.prompts if n not in ("query", document)]
    else:
        lines = [f"v = m.encode({docs})  # float32 numpy [2, {entry.dimension}]"]
    if is_matryoshka(entry):
        recipe = "layer norm, truncate, normalize" if entry.matryoshka_layer_norm else "truncate, then normalize"
        lines.append(f"m.encode({docs}, dimensions={MATRYOSHKA_EXAMPLE})  # Matryoshka: {recipe}")
    return [*lines, f"m.rank({q}, {docs}, top_k=2)  # cosine"]


def _reranker_usage(entry: CatalogEntry) -> list[str]:
    q = quoted(EXAMPLE_QUERY)
    lines = [f'r.rank({q}, docs, top_k=2)  # [{{"index", "score"}}], best first']
    if kind(entry) != "cross-encoder":
        lines.append(f"r.rank({q}, docs, instruction={quoted(EXAMPLE_INSTRUCTION)})")
    return [*lines, f"r.score([({q}, docs[0])])  # float32 [1]"]


def _embzoo_usage(entry: CatalogEntry, repo_id: str | None) -> str:
    var = "r" if is_reranker(entry) else "m"
    lines = ["import embzoo", "", *_load_lines(var, entry, repo_id), f"docs = {quoted(EXAMPLE_DOCS)}"]
    lines += _reranker_usage(entry) if is_reranker(entry) else _embedder_usage(entry)
    return "\n".join(lines)


def _default_instruction(entry: CatalogEntry) -> str:
    """A generative reranker's instruction when the caller gives none ("" = none)."""
    return getattr(KINDS[entry.reranker].template, "default_instruction", None) or ""


def _embzoo_notes(entry: CatalogEntry) -> str:
    notes = ['On a GPU: `embzoo.load(..., device="cuda", dtype="bfloat16")`.']
    k = kind(entry)
    if k == "cross-encoder":
        notes.append("Cross-encoders take no instruction.")
    if k in ("yes/no", "listwise"):
        has_default = bool(_default_instruction(entry))
        notes.append(
            "`instruction=None` means the default (see Prompts); one given replaces it."
            if has_default
            else "`instruction=None` means no instruction."
        )
    if k == "listwise":
        notes.append(f"Scores: {_activation(entry)}.")
    elif is_reranker(entry):
        notes.append(f"Default scores: {_activation(entry)}; `activation=` in `rank` / `score` picks another.")
    if k == "colbert":
        notes.append(
            '`encode` needs the role: `prompt_name="query"|"document"`, or `encode_query` / `encode_document`.'
        )
    return "\n".join(f"- {n}" for n in notes)


def _activation(entry: CatalogEntry) -> str:
    k = kind(entry)
    value = KINDS[entry.reranker].template.activation if k in ("yes/no", "listwise") else entry.activation
    if k == "listwise":
        return "cosines in [-1, 1] (no activation)"
    if value == "none":
        return 'raw logits (`activation="none"`, as the model card\'s reference prints them)'
    if value == "sigmoid":
        return 'sigmoid (`activation="sigmoid"`, as the model card\'s reference prints them)'
    return "the activation the checkpoint stores (sigmoid when it stores none), as CrossEncoder does"


def _server_usage(entry: CatalogEntry, repo_id: str | None) -> str:
    """`embzoo serve` and one request: /v1/embeddings for sentence vectors, /v1/rerank for rerankers and for models
    whose vectors are per token or sparse (the server ranks with their own scores)."""
    name = repo_id or entry.hub_id
    serve = f"embzoo serve --model {name} --port 8000"
    k = kind(entry)
    if is_reranker(entry) or k in ("colbert", "splade"):
        body = {"model": name, "query": EXAMPLE_QUERY, "documents": EXAMPLE_DOCS, "top_n": 1}
        endpoint, note = "rerank", "`/v1/rerank` (Cohere / Jina schema) ranks with the model's own scores"
        if k in ("colbert", "splade"):
            note += "; `/v1/embeddings` serves sentence vectors only, which this model has not"
    else:
        body = {"model": name, "input": [EXAMPLE_QUERY, *EXAMPLE_DOCS]}
        endpoint, note = "embeddings", "`/v1/embeddings` (OpenAI schema) returns `encode`'s vectors"
        if entry.prompts:
            body["prompt_name"] = next(iter(entry.prompts))
            note += "; `prompt_name` / `prompt` / `instruction` work as in `encode`"
    request = f"curl -s localhost:8000/v1/{endpoint} -H 'Content-Type: application/json' -d '{json.dumps(body)}'"
    return (
        f"```bash\n{serve}\n{request}\n```\n\n{note} (`pip install 'embzoo[serve]'`; see the README's Serving section)."
    )


def _st_usage(entry: CatalogEntry, repo_id: str | None) -> str:
    support, name = _st_support(entry), repo_id or entry.hub_id
    if support in NOT_SENTENCE_TRANSFORMERS:
        return Template(NOT_SENTENCE_TRANSFORMERS[support]).substitute(id=name)
    args = quoted(name) + (", trust_remote_code=True" if support == "remote" else "")
    k, q = kind(entry), quoted(EXAMPLE_QUERY)
    cls = {"cross-encoder": "CrossEncoder", "splade": "SparseEncoder"}.get(k, "SentenceTransformer")
    lines = [f"from sentence_transformers import {cls}", "", f"model = {cls}({args})", f"docs = {quoted(EXAMPLE_DOCS)}"]
    if k == "cross-encoder":
        lines.append(f"model.rank({q}, docs, top_k=2)")
    elif k == "splade":
        lines.append("w = model.encode(docs)")
    else:
        lines += _st_encode_lines(entry)
    text = "```python\n" + "\n".join(lines) + "\n```"
    if support == "remote":
        text += "\n\n`trust_remote_code=True` runs the repository's own modeling code (embzoo runs none)."
    if k == "hybrid":
        text += "\n\nsentence-transformers gives the dense vectors; the sparse and ColBERT outputs' reference is "
        text += "FlagEmbedding's `BGEM3FlagModel`."
    return text


def _st_encode_lines(entry: CatalogEntry) -> list[str]:
    docs, q = "docs", quoted(EXAMPLE_QUERY)
    if entry.task_instructions:
        query, passage = _task(entry, "query"), _task(entry, "passage")
        return [
            f"q = model.encode([{q}], task={quoted(query)}, prompt_name={quoted(query)})",
            f"d = model.encode({docs}, task={quoted(passage)}, prompt_name={quoted(passage)})",
        ]
    query = entry.prompts.get("query", "")
    document = entry.prompts.get("document", entry.prompts.get("passage", ""))
    lines = [f"q = model.encode([{q}]" + (f", prompt={quoted(query)})" if query else ")")]
    lines.append(f"d = model.encode({docs}" + (f", prompt={quoted(document)})" if document else ")"))
    return lines


def _pooling(entry: CatalogEntry) -> str:
    k = kind(entry)
    if k == "cross-encoder":
        return "the classification head pools its own input"
    if k == "yes/no":
        return "last token → the LM head reduced to one score row"
    if k == "listwise":
        return "hidden states at the marker tokens → projector → cosine with the query's"
    if k == "colbert":
        return "none: one vector per kept token"
    if k == "splade":
        return "SPLADE pooling of the masked-LM logits over the tokens"
    names = {"cls": "CLS token", "mean": "mean over tokens", "lasttoken": "last token"}
    pooled = ", ".join(names.get(p, p) for p in entry.pooling)
    if entry.family == "nv_embed":
        pooled = f"latent-attention pooler, then {pooled}"
    masks = {"prompt_tokens": " (the instruction's positions left out)", "text_tokens": " (the text's own tokens only)"}
    return pooled + masks.get(entry.instruction_mask, "")


def _dimensions(entry: CatalogEntry) -> str:
    k = kind(entry)
    if is_reranker(entry):
        return "one score per (query, document) pair"
    if k == "colbert":
        return f"{entry.dimension} per token"
    if k == "splade":
        return f"sparse over a {entry.dimension}-token vocabulary"
    if k == "hybrid":
        return f"{entry.dimension} (dense), plus sparse lexical weights and per-token ColBERT vectors"
    return str(entry.dimension)


def _max_length(entry: CatalogEntry) -> str:
    unit = {
        "cross-encoder": "tokens per (query, document) pair",
        "yes/no": "tokens per (query, document) pair, template included",
        "listwise": "tokens per block prompt (a query and its documents)",
        "colbert": "tokens per document (queries: the model's query length)",
    }.get(kind(entry), "tokens")
    cut = (
        "a longer list is split into blocks" if kind(entry) == "listwise" else "longer inputs are cut with one warning"
    )
    return f"{entry.max_seq_length} {unit}; {cut}"


def _facts(entry: CatalogEntry) -> str:
    facts = [
        f"Family: `{entry.family}` (`embzoo/conversion/families/{entry.family}.py`)",
        f"Pooling: {_pooling(entry)}",
        f"Output: {_dimensions(entry)}",
    ]
    if is_matryoshka(entry):
        how = (
            "a non-affine layer norm, then truncate and normalize"
            if entry.matryoshka_layer_norm
            else ("truncate, then normalize")
        )
        facts.append(f"Matryoshka: `encode(dimensions=...)`, {how} (the source's card names the trained sizes)")
    if not is_reranker(entry) and kind(entry) == "embedder":
        facts.append(f"L2-normalized: {'yes' if entry.normalize else 'no'}")
    facts += [f"Max length: {_max_length(entry)}", f"License: {entry.license}", f"Languages: {entry.languages}"]
    return "\n".join(f"- {f}" for f in facts)


def _prompts(entry: CatalogEntry) -> str:
    rows = [f"prompt `{name}`: {literal(text)}" for name, text in entry.prompts.items()]
    if entry.instruction_template:
        rows.append(f"instruction template: {literal(entry.instruction_template)}")
    rows += [f"task `{name}`: {literal(text)}" for name, text in entry.task_instructions.items()]
    if entry.text_suffix:
        rows.append(f"appended to every text: {literal(entry.text_suffix)}")
    if entry.end_token:
        rows.append(f"end token (every input ends with it): {literal(entry.end_token)}")
    if entry.reranker and _default_instruction(entry):
        rows.append(f"default instruction: {literal(_default_instruction(entry))}")
    kind_note = {
        "yes/no": "The pair template is byte-exact in `embzoo/yes_no_templates.py`.",
        "listwise": "The block prompt is byte-exact in `embzoo/listwise_templates.py`.",
        "colbert": "The query and document markers and lengths come from the checkpoint's own files.",
    }.get(kind(entry), "")
    if not rows:
        return kind_note or "None: texts are encoded as given."
    head = "Python string literals (the quotes are not part of the text, `\\n` is a newline), byte-exact:"
    return "\n".join([head, "", *(f"- {r}" for r in rows)] + (["", kind_note] if kind_note else []))


def evidence(entry: CatalogEntry) -> list[tuple[str, str]]:
    """(test file, what it checks) for the entry: its family's backbone parity, its kind's, its own."""
    found = [FAMILY_EVIDENCE[entry.family]]
    k = kind(entry)
    if k in KIND_EVIDENCE:
        found.append(KIND_EVIDENCE[k])
    if entry.pooling and entry.hub_id != DEFAULT_MODEL:
        found.append(SENTENCE_EVIDENCE)
    if entry.instruction_template or entry.end_token:
        found.append(KIND_EVIDENCE["instruction"])
    if entry.matryoshka_layer_norm:
        found.append(KIND_EVIDENCE["matryoshka layer norm"])
    if entry.task_instructions:
        found.append(KIND_EVIDENCE["task lora"])
    if entry.hub_id in MODEL_EVIDENCE:
        found.append(MODEL_EVIDENCE[entry.hub_id])
    return found


def _evidence(entry: CatalogEntry) -> str:
    grouped: dict[str, list[str]] = {}
    for path, what in evidence(entry):
        grouped.setdefault(path, []).append(what)
    rows = [f"- `{path}`: {'; '.join(whats)}" for path, whats in grouped.items()]
    if entry.hub_id == DEFAULT_MODEL:
        closing = "The bundled real weights are compared; the family test uses tiny random checkpoints."
    else:
        closing = (
            "These tests build tiny random checkpoints in this model's Hub layout (fp32); no test downloads "
            "these weights."
        )
    return "\n".join([*rows, "", closing])


def card_body(entry: CatalogEntry, repo_id: str | None = None, converted: bool = False) -> str:
    """The card's Markdown after its front matter; repo_id: a copy of the model uploaded there (its usage then loads
    repo_id with this entry's recipe); converted: that copy is an embzoo folder (`embzoo convert`)."""
    hub = f"[{entry.hub_id}](https://huggingface.co/{entry.hub_id})"
    if repo_id is None:
        source = f"The weights are {hub} as published; embzoo reads that layout directly (no conversion step)."
    elif converted:
        source = f"{hub} converted by `embzoo convert` (an embzoo folder), uploaded with embzoo's `hub_upload.py`."
    else:
        source = f"A copy of {hub}, uploaded with embzoo's `hub_upload.py`."
    st_usage = CONVERTED_ST.format(id=repo_id) if converted else _st_usage(entry, repo_id)
    return TEMPLATE.substitute(
        title=repo_id or entry.hub_id,
        summary=entry.summary,
        source=source,
        embzoo_usage=_embzoo_usage(entry, repo_id),
        embzoo_notes=_embzoo_notes(entry),
        st_usage=st_usage,
        server_usage=_server_usage(entry, repo_id),
        facts=_facts(entry),
        prompts=_prompts(entry),
        evidence=_evidence(entry),
    )


def render_card(entry: CatalogEntry) -> str:
    """The entry's whole card: YAML front matter (card_metadata) and body (card_body)."""
    return front_matter(card_metadata(entry)) + "\n" + card_body(entry)


def write_cards(folder: str | Path = CARDS_DIR) -> list[Path]:
    """Write every catalog entry's card into folder and remove the cards of entries no longer catalogued
    (other *.md files there); returns the written paths in catalog order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in CATALOG.values():
        path = folder / card_filename(entry.hub_id)
        path.write_text(render_card(entry), encoding="utf-8")
        written.append(path)
    for stale in set(folder.glob("*.md")) - set(written):
        stale.unlink()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m embzoo.model_cards", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=str(CARDS_DIR),
        help="folder to write the cards into (default: %(default)s, run from the repository root)",
    )
    args = parser.parse_args(argv)
    print(f"wrote {len(write_cards(args.out))} cards to {args.out}")


if __name__ == "__main__":
    main()
