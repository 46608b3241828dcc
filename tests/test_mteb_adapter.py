"""embzoo.integrations.mteb: mteb.evaluate with our encoder and cross-encoder against mteb's own sentence-transformers
wrappers on the same folders (mteb's mock tasks, a retrieval task built from the shipped demo sentences), prompt
routing as mteb's wrappers route prompts, instruction templates, ModelMeta from the catalog. Offline: mteb's tasks
here load no data and results go to a ResultCache under tmp_path."""

import json
from importlib import resources
from pathlib import Path

import mteb
import numpy as np
import pytest
import torch
from conftest import write_st_layout
from datasets import Dataset
from families.test_jina_embeddings_v3 import SMALL, build_native, lora_factors, to_original
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.mocks.mock_tasks.reranking import MockInstructionReranking, MockRerankingTask
from mteb.mocks.mock_tasks.retrieval import MockInstructionRetrieval, MockRetrievalTask
from mteb.mocks.mock_tasks.sts import MockSTSTask
from mteb.models import CrossEncoderProtocol, CrossEncoderWrapper, EncoderProtocol, SentenceTransformerEncoderWrapper
from mteb.models.model_implementations.qwen3_models import instruction_template as mteb_qwen3_template
from mteb.types import OutputDType, PromptType
from sentence_transformers import CrossEncoder, SentenceTransformer
from test_instructions import qwen3_folder  # noqa: F401  (fixture)
from test_jina_reranker_v3 import RECIPE as JINA_V3
from test_jina_reranker_v3 import checkpoint as jina_checkpoint  # noqa: F401  (fixture)
from test_jina_reranker_v3 import reference_scores
from test_rerank import bert_checkpoint
from torch.utils.data import DataLoader
from transformers import BertConfig, BertModel

import embzoo
from embzoo.catalog import CATALOG, DEFAULT_MODEL, bundled_model_path
from embzoo.integrations.mteb import TASK_ADAPTERS, EmbzooCrossEncoder, EmbzooEncoder, get_model, model_meta
from embzoo.model_cards import kind

DOCS = resources.files("embzoo").joinpath("data/demo_sentences.txt").read_text("utf-8").splitlines()
QUERIES = [  # query i has one clearly relevant sentence: line i of demo_sentences.txt
    "Who is having bread for a meal?",
    "a musician performing on a string instrument",
    "kids on horseback by the sea",
    "a review praising a film and its cast",
    "a fast wild cat chasing an animal in Africa",
    "shares dropped after the central bank moved rates",
    "how do transformers rotate vectors to represent where tokens are?",
    "What is the capital of France?",
    "why working out is good for body and mind",
    "a dog plays with a ball in the garden",
    "what ingredients do I need to bake a cake?",
    "which language do people use to write AI code?",
]
DEMO_ARGS = dict(
    description="Queries over embzoo's shipped demo sentences, one relevant sentence each.",
    reference="https://github.com/embeddings-benchmark/mteb",
    dataset={"path": "NA", "revision": "NA"},
    category="t2t",
    eval_splits=["test"],
    eval_langs=["eng-Latn"],
    date=("2024-01-01", "2024-01-01"),
    dialect=["Written"],
    domains=[],
    task_subtypes=[],
    license="apache-2.0",
    annotations_creators="derived",
    modalities=["text"],
    sample_creation="created",
    bibtex_citation="",
    main_score="ndcg_at_10",
    prompt={"query": "Given a question, retrieve the sentence that answers it"},
)


class DemoRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(type="Retrieval", name="EmbzooDemoRetrieval", **DEMO_ARGS)
    candidates = None  # the reranking variant: each query's pre-ranked documents

    def load_data(self, num_proc=None, **kwargs):
        ids = [f"d{i}" for i in range(len(DOCS))]
        self.dataset = {
            "default": {
                "test": RetrievalSplitData(
                    queries=Dataset.from_list([{"id": f"q{i}", "text": q} for i, q in enumerate(QUERIES)]),
                    corpus=Dataset.from_list(
                        [{"id": d, "text": t, "title": ""} for d, t in zip(ids, DOCS, strict=True)]
                    ),
                    relevant_docs={f"q{i}": {f"d{i}": 1} for i in range(len(QUERIES))},
                    top_ranked=None
                    if self.candidates is None
                    else {f"q{i}": self.candidates for i in range(len(QUERIES))},
                )
            }
        }
        self.data_loaded = True


class DemoReranking(DemoRetrieval):
    metadata = TaskMetadata(type="Reranking", name="EmbzooDemoReranking", **DEMO_ARGS)
    candidates = [f"d{i}" for i in reversed(range(len(DOCS)))]  # worst order first: the reranker must fix it


def run(model, tasks, tmp_path: Path, name: str, batch_size: int = 32):
    """mteb.evaluate into tmp_path/name (cache and predictions): {(task, split): main score}, {task: predictions}."""
    folder = tmp_path / name
    result = mteb.evaluate(
        model,
        tasks,
        cache=mteb.ResultCache(folder / "cache"),
        prediction_folder=folder / "predictions",
        encode_kwargs={"batch_size": batch_size},
        show_progress_bar=False,
    )
    scores = {(r.task_name, split): s[0]["main_score"] for r in result.task_results for split, s in r.scores.items()}
    predictions = {
        p.name.split("_predictions")[0]: json.loads(p.read_text()) for p in (folder / "predictions").iterdir()
    }
    return scores, predictions


def worst_prediction_diff(ours: dict, theirs: dict) -> float:
    """The largest difference between two runs' saved (query, document) scores; they must score the same pairs."""
    worst = 0.0
    for task, subsets in theirs.items():
        for subset, splits in subsets.items():
            if subset == "mteb_model_meta":
                continue
            for split, queries in splits.items():
                for qid, docs in queries.items():
                    assert ours[task][subset][split][qid].keys() == docs.keys()
                    for did, score in docs.items():
                        worst = max(worst, abs(ours[task][subset][split][qid][did] - score))
    return worst


@pytest.fixture(scope="module")
def minilm():
    """(our encoder, mteb's SentenceTransformer wrapper) on the bundled MiniLM folder."""
    st = SentenceTransformer(str(bundled_model_path()), device="cpu")
    return get_model(device="cpu"), SentenceTransformerEncoderWrapper(st)


def loader(texts, batch_size=2) -> DataLoader:
    """mteb's batched text inputs: {"text": [...]} per batch."""
    return DataLoader(Dataset.from_dict({"text": texts}), batch_size=batch_size)


def test_protocols(minilm):
    ours, _ = minilm
    assert isinstance(ours, EncoderProtocol) and not isinstance(ours, CrossEncoderProtocol)
    assert isinstance(ours, EmbzooEncoder)


def test_mock_tasks_match_sentence_transformers(minilm, tmp_path):
    ours, st = minilm
    tasks = [MockRetrievalTask(), MockRerankingTask(), MockInstructionRetrieval(), MockInstructionReranking()]
    got, got_predictions = run(ours, tasks, tmp_path, "ours")
    want, want_predictions = run(st, tasks, tmp_path, "st")
    assert got.keys() == want.keys() and len(got) == 5  # MockRetrievalTask has two splits
    for key, score in want.items():
        assert abs(got[key] - score) <= 1e-4, (key, got[key], score)
    assert worst_prediction_diff(got_predictions, want_predictions) <= 1e-5
    # results are written under the catalog name, with the meta and the run settings
    written = tmp_path / "ours" / "cache" / "results" / "sentence-transformers__all-MiniLM-L6-v2"
    files = {p.name for p in written.rglob("*.json")}
    assert {"MockRetrievalTask.json", "MockRerankingTask.json", "model_meta.json"} <= files
    meta = json.loads(next(written.rglob("model_meta.json")).read_text())
    assert meta["name"] == DEFAULT_MODEL and meta["loader"] == "EmbzooEncoder" and meta["n_parameters"] > 0


def test_demo_retrieval_task(minilm, tmp_path):
    ours, st = minilm
    got, got_predictions = run(ours, [DemoRetrieval()], tmp_path, "ours", batch_size=5)
    want, want_predictions = run(st, [DemoRetrieval()], tmp_path, "st")
    key = ("EmbzooDemoRetrieval", "test")
    assert got[key] >= 0.95 and abs(got[key] - want[key]) <= 1e-4, (got, want)
    assert worst_prediction_diff(got_predictions, want_predictions) <= 1e-5


def test_encode_feeds_every_batch_to_one_call(minilm, monkeypatch):
    ours, st = minilm
    calls = []
    encode = ours.model.encode
    monkeypatch.setattr(ours.model, "encode", lambda texts, **kw: calls.append(texts) or encode(texts, **kw))
    meta = DemoRetrieval.metadata
    got = ours.encode(loader(DOCS, batch_size=5), task_metadata=meta, hf_split="test", hf_subset="default")
    assert calls == [DOCS] and got.dtype == np.float32 and got.shape == (len(DOCS), 384)
    want = st.encode(loader(DOCS, batch_size=5), task_metadata=meta, hf_split="test", hf_subset="default")
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(ours.similarity(got[:3], got), st.similarity(want[:3], want), atol=1e-5)
    pairs = ours.similarity_pairwise(got, np.roll(got, 1, axis=0))
    np.testing.assert_allclose(pairs, st.similarity_pairwise(want, np.roll(want, 1, axis=0)), atol=1e-5)


@pytest.fixture
def prompted_folder(make_checkpoint):
    """A tiny BERT sentence-transformers folder with e5-style prompts (a passage prompt, no document prompt)."""
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)  # fmt: skip
    folder, _ = make_checkpoint(BertModel, config, name="prompted", noise=0.1)
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}
    write_st_layout(folder, pooling, normalize=True, max_seq_length=64, prompts={"query": "q: ", "passage": "p: "})
    return folder


RETRIEVAL, STS, RERANKING = MockRetrievalTask.metadata, MockSTSTask.metadata, MockRerankingTask.metadata
SCIFACT = "SciFact"  # a task name mteb knows (model_prompts keys are checked against its registry)
CUSTOM = {"Retrieval-query": "rq: ", "Retrieval": "r: ", "STS": "s: ", "query": "any q: ", f"{SCIFACT}-query": "sf: "}
# the reference for the folder's own prompts: mteb registers e5 with model_prompts {query, document: "passage: "}
# (sentence-transformers 6 gives every model a "document" prompt, "" unless saved, ahead of the "passage" fallback)
E5_STYLE = {"query": "q: ", "document": "p: "}
# (model_prompts, task, prompt type, the prompt mteb's order picks: task name + type, task name, task type + type,
# task type, prompt type; then the model's query / document ("passage") prompt; None = no prompt)
ROUTES = [
    (None, RETRIEVAL, PromptType.query, "q: "),
    (None, RETRIEVAL, PromptType.document, "p: "),
    (None, STS, None, None),
    (CUSTOM, RETRIEVAL, PromptType.query, "rq: "),
    (CUSTOM, RETRIEVAL, PromptType.document, "r: "),
    (CUSTOM, STS, None, "s: "),
    (CUSTOM, RERANKING, PromptType.query, "any q: "),
    (CUSTOM, RERANKING, PromptType.document, None),  # custom prompts replace the model's: no "passage" left
    (CUSTOM, SCIFACT, PromptType.query, "sf: "),
]


@pytest.mark.parametrize("model_prompts, task, prompt_type, prompt", ROUTES)
def test_prompt_routing_matches_sentence_transformers(prompted_folder, model_prompts, task, prompt_type, prompt):
    task = mteb.get_task(task).metadata if isinstance(task, str) else task
    ours = EmbzooEncoder(prompted_folder, device="cpu", model_prompts=model_prompts)
    st_model = SentenceTransformer(str(prompted_folder), device="cpu")
    st = SentenceTransformerEncoderWrapper(st_model, model_prompts=model_prompts or E5_STYLE)
    assert ours.prompt_for(task, prompt_type) == prompt
    args = dict(task_metadata=task, hf_split="test", hf_subset="default", prompt_type=prompt_type)
    got = ours.encode(loader(QUERIES[:5]), **args)
    np.testing.assert_allclose(got, st.encode(loader(QUERIES[:5]), **args), atol=1e-5)
    bare = ours.model.encode(QUERIES[:5])
    assert np.allclose(got, bare, atol=1e-5) == (prompt is None)  # the prompt reached the model


def test_instruction_template_as_mteb_instruct_wrapper(qwen3_folder):  # noqa: F811
    m = embzoo.load(qwen3_folder, recipe="Qwen/Qwen3-Embedding-0.6B", device="cpu")
    ours = EmbzooEncoder(m)
    task = DemoRetrieval.metadata
    texts = QUERIES[:4]

    def encode(prompt_type, metadata=task, wrapper=ours):
        args = dict(task_metadata=metadata, hf_split="test", hf_subset="default", prompt_type=prompt_type)
        return wrapper.encode(loader(texts), **args)

    # queries: mteb's own Qwen3-Embedding template around the task's query prompt; documents: nothing
    instruction = task.prompt["query"]
    want = m.encode(texts, prompt=mteb_qwen3_template(instruction, PromptType.query))
    np.testing.assert_allclose(encode(PromptType.query), want, atol=1e-6)
    np.testing.assert_allclose(encode(PromptType.document), m.encode(texts, prompt=""), atol=1e-6)
    assert not np.allclose(want, m.encode(texts, prompt=""), atol=1e-3)
    # symmetric tasks get their instruction too (mteb's abstask prompt when the task states none)
    sts = ours.get_instruction(STS, None)
    assert sts and ours.prompt_for(STS, None) == f"Instruct: {sts}\nQuery:"
    # per-task instructions (prompts_dict), and the model's document prompt where it has one
    m.prompts["document"] = "passage: "
    custom = EmbzooEncoder(m, prompts_dict={"Retrieval": "Find the sentence"})
    np.testing.assert_allclose(
        encode(PromptType.query, wrapper=custom),
        m.encode(texts, prompt="Instruct: Find the sentence\nQuery:"),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        encode(PromptType.document, wrapper=custom), m.encode(texts, prompt="passage: "), atol=1e-6
    )
    with pytest.raises(ValueError, match="prompts_dict"):
        EmbzooEncoder(m, model_prompts={"query": "q: "})


JINA_ROUTES = [  # mteb's JinaWrapper routing: (task, prompt type, the adapter; None = base weights)
    (RETRIEVAL, PromptType.query, "retrieval.query"),
    (RETRIEVAL, PromptType.document, "retrieval.passage"),
    (STS, None, "text-matching"),
    (RERANKING, PromptType.query, "separation"),
    (MockInstructionRetrieval.metadata, PromptType.query, None),
]


def test_task_adapters_as_mteb_jina_wrapper(make_checkpoint):
    assert mteb.get_model_meta("jinaai/jina-embeddings-v3").loader_kwargs["model_prompts"] == TASK_ADAPTERS
    folder, ref = build_native(make_checkpoint, "jina")  # rewritten in the original layout with its 5 task LoRA
    folder = to_original(folder, ref.state_dict(), lora_factors(ref.state_dict(), SMALL["num_hidden_layers"]))
    ours = EmbzooEncoder(folder, device="cpu")
    for task, prompt_type, adapter in JINA_ROUTES:
        assert ours.task_for(task, prompt_type) == adapter
        args = dict(task_metadata=task, hf_split="test", hf_subset="default", prompt_type=prompt_type)
        got = ours.encode(loader(QUERIES[:3]), **args)
        np.testing.assert_array_equal(got, ours.model.encode(QUERIES[:3], task=adapter))
    assert not np.allclose(ours.model.encode(QUERIES[:3], task="separation"), ours.model.encode(QUERIES[:3]), atol=1e-3)
    custom = EmbzooEncoder(ours.model, model_prompts={"Retrieval": "classification"})
    assert custom.task_for(RETRIEVAL, PromptType.document) == "classification"
    with pytest.raises(ValueError, match="unknown task 'retrieval'"):
        EmbzooEncoder(ours.model, model_prompts={"Retrieval": "retrieval"})


def test_prompts_dict_needs_an_instruction_template(prompted_folder):
    with pytest.raises(ValueError, match="model_prompts"):
        EmbzooEncoder(prompted_folder, device="cpu", prompts_dict={"Retrieval": "x"})


def test_cross_encoder_matches_mteb_cross_encoder_wrapper(make_checkpoint, tmp_path):
    folder, _ = bert_checkpoint(make_checkpoint)
    ours = get_model(folder, device="cpu")
    st = CrossEncoderWrapper(CrossEncoder(str(folder), device="cpu"))
    assert isinstance(ours, EmbzooCrossEncoder) and isinstance(ours, CrossEncoderProtocol)
    assert not isinstance(ours, EncoderProtocol)
    meta = ours.mteb_model_meta
    assert meta.is_cross_encoder and meta.embed_dim is None and not meta.use_instructions and meta.n_parameters > 0
    tasks = [MockRerankingTask(), MockInstructionReranking(), DemoReranking()]
    got, got_predictions = run(ours, tasks, tmp_path, "ours", batch_size=5)
    want, want_predictions = run(st, tasks, tmp_path, "st")
    assert got.keys() == want.keys() and len(got) == 3
    for key, score in want.items():
        assert abs(got[key] - score) <= 1e-4, (key, got[key], score)
    assert worst_prediction_diff(got_predictions, want_predictions) <= 1e-5
    args = dict(task_metadata=RERANKING, hf_split="test", hf_subset="default")
    scores = ours.predict(loader(QUERIES), loader(DOCS), **args)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, st.predict(loader(QUERIES), loader(DOCS), **args), atol=1e-5)


def test_listwise_reranker_ranks_each_querys_candidates_together(jina_checkpoint, tmp_path):  # noqa: F811
    folder, model, proj, tok = jina_checkpoint()
    ours = EmbzooCrossEncoder(embzoo.load(folder, recipe=JINA_V3, device="cpu", dtype="float32"))
    assert ours.mteb_model_meta.name == JINA_V3 and ours.mteb_model_meta.use_instructions
    _, predictions = run(ours, [DemoReranking()], tmp_path, "ours", batch_size=5)  # a list spans 3 batches
    scores = predictions["EmbzooDemoReranking"]["default"]["test"]
    worst = 0.0
    for i, query in enumerate(QUERIES[:3]):
        want = reference_scores(model, proj, tok, query, [DOCS[int(d[1:])] for d in DemoReranking.candidates])
        got = np.array([scores[f"q{i}"][d] for d in DemoReranking.candidates])
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= 1e-4, worst


def test_wrappers_refuse_the_other_kind(make_checkpoint, prompted_folder):
    folder, _ = bert_checkpoint(make_checkpoint)
    with pytest.raises(TypeError, match="EmbzooCrossEncoder"):
        EmbzooEncoder(folder, device="cpu")
    with pytest.raises(TypeError, match="EmbzooEncoder"):
        EmbzooCrossEncoder(prompted_folder, device="cpu")
    with pytest.raises(ValueError, match="reranker"):
        get_model(folder, device="cpu", model_prompts={"query": "q: "})
    with pytest.raises(ValueError, match="not a loaded model"):
        EmbzooEncoder(embzoo.load(prompted_folder, device="cpu"), device="cpu")


def test_model_meta_from_the_catalog():
    e5 = model_meta("intfloat/e5-small-v2")
    assert (e5.name, e5.license, e5.languages, e5.embed_dim, e5.max_tokens) == (
        "intfloat/e5-small-v2",
        "mit",
        ["eng-Latn"],
        384,
        512,
    )
    assert e5.loader is EmbzooEncoder and e5.model_type == ["dense"] and e5.use_instructions and e5.open_weights
    assert e5.reference == "https://huggingface.co/intfloat/e5-small-v2"
    # what the catalog does not record stays unknown
    assert e5.n_parameters is e5.memory_usage_mb is e5.release_date is e5.training_datasets is e5.similarity_fn_name
    assert e5.n_parameters is None
    reranker = model_meta("BAAI/bge-reranker-base")
    assert reranker.loader is EmbzooCrossEncoder and reranker.is_cross_encoder and reranker.embed_dim is None
    assert reranker.languages == ["zho-Hans", "eng-Latn"] and not reranker.use_instructions
    assert model_meta("Qwen/Qwen3-Reranker-0.6B").use_instructions and model_meta("BAAI/bge-m3").languages is None
    assert model_meta("jinaai/jina-embeddings-v2-base-code").languages == ["eng-Latn"]
    assert model_meta().name == DEFAULT_MODEL and not model_meta().use_instructions
    for entry in CATALOG.values():  # every embedder and reranker of the catalog has a meta
        if kind(entry) not in ("colbert", "splade"):
            assert model_meta(entry).name == entry.hub_id
    with pytest.raises(ValueError, match="ColBERT|colbert"):
        model_meta("colbert-ir/colbertv2.0")
    with pytest.raises(ValueError, match="not in the catalog"):
        model_meta("nobody/nothing")


def test_model_meta_of_a_loaded_model(minilm):
    ours, _ = minilm
    meta = ours.mteb_model_meta
    hf = SentenceTransformer(str(bundled_model_path()), device="cpu")[0].auto_model  # BertModel with its pooler
    pooler = sum(p.numel() for p in hf.pooler.parameters())  # embzoo does not load the unused pooler
    assert meta.n_parameters == sum(p.numel() for p in hf.parameters()) - pooler
    assert meta.n_embedding_parameters == hf.embeddings.word_embeddings.weight.numel() == 30522 * 384
    assert meta.memory_usage_mb == round(meta.n_parameters * 4 / 2**20, 1) and meta.output_dtypes is None
    assert (meta.embed_dim, meta.max_tokens, meta.similarity_fn_name.value) == (384, 256, "cosine")
    half = model_meta(model=embzoo.load(device="cpu", dtype="bfloat16"))
    assert half.output_dtypes == OutputDType.BF16 and half.memory_usage_mb == round(meta.n_parameters * 2 / 2**20, 1)


@pytest.mark.parametrize("stated", ["dot", "manhattan"])
def test_similarity_function_from_the_checkpoint(prompted_folder, stated):
    path = prompted_folder / "config_sentence_transformers.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"similarity_fn_name": stated}))
    if stated == "manhattan":
        with pytest.raises(ValueError, match="manhattan"):
            get_model(prompted_folder, device="cpu")
        return
    ours = get_model(prompted_folder, device="cpu")
    assert ours.mteb_model_meta.similarity_fn_name.value == "dot"
    a, b = torch.randn(3, 8), torch.randn(4, 8)
    torch.testing.assert_close(ours.similarity(a, b), a @ b.T)
    torch.testing.assert_close(ours.similarity_pairwise(a, b[:3]), (a * b[:3]).sum(-1))


def test_meta_loader_rebuilds_the_wrapper(prompted_folder, monkeypatch):
    ours = get_model(prompted_folder, device="cpu", batch_tokens=64, model_prompts={"query": "x: "})
    meta = ours.mteb_model_meta
    assert meta.name == str(prompted_folder) and meta.languages is None and meta.license is None
    assert meta.loader_kwargs == {"batch_tokens": 64, "model_prompts": {"query": "x: "}}
    again = meta.load_model(device="cpu")
    assert isinstance(again, EmbzooEncoder) and again.batch_tokens == 64
    args = dict(task_metadata=RETRIEVAL, hf_split="test", hf_subset="default", prompt_type=PromptType.query)
    np.testing.assert_array_equal(again.encode(loader(QUERIES), **args), ours.encode(loader(QUERIES), **args))
    monkeypatch.chdir(prompted_folder.parent)  # mteb names need a "/": a bare folder name is made absolute
    assert get_model(prompted_folder.name, device="cpu").mteb_model_meta.name == str(prompted_folder)
