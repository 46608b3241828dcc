"""The HTTP server (embzoo.integrations.server) in-process through httpx's ASGI transport: each endpoint's answers
against the models' offline encode / rank / score, dynamic batching of concurrent requests, the error answers,
/metrics, graceful shutdown, `embzoo serve`, and a short run of bench/load_test.py."""

import asyncio
import base64
import json
import re
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import TINY_QWEN3, save_checkpoint
from test_rerank import bert_checkpoint

import embzoo
from embzoo.cli import main
from embzoo.integrations.metrics import Metrics
from embzoo.integrations.server import ServerSettings, create_app
from embzoo.tokenization import ModelInputs, TextTokenizer

TEXTS = ["what is rope?", "", "a cheetah is chasing its prey across the field", "ok " * 300, "naïve café"]
DOCS = ["Rotary embeddings rotate queries and keys.", "A rope is twisted fibre.", "Cheetahs run fast."]
# exact equality is not guaranteed: a text's packed neighbours change the float32 rounding of the forward
TOLERANCE = 1e-6
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? [-+0-9.eE]+(Inf)?$')


@pytest.fixture(scope="module")
def minilm():
    return embzoo.load(device="cpu")


@asynccontextmanager
async def serving(models, **settings):
    """The app with its lifespan running, and a client for it."""
    app = create_app(models, ServerSettings(**settings))
    async with app.router.lifespan_context(app), client_for(app) as client:
        yield app, client


async def started_app(models) -> tuple:
    """(the app, its running lifespan): the test ends the lifespan itself, to watch a shutdown."""
    app = create_app(models, ServerSettings())
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    return app, lifespan


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://embzoo")


def assert_errors(answers, expected) -> None:
    """Each answer has the expected (status, a fragment of the error message)."""
    for answer, (status, message) in zip(answers, expected, strict=True):
        assert answer.status_code == status, answer.text
        assert message in answer.json()["error"]["message"], answer.text


def vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data))) and {d["object"] for d in data} == {"embedding"}
    return np.asarray([d["embedding"] for d in data], dtype=np.float32)


def parse_metrics(text: str) -> dict[str, float]:
    """Every sample line `name{labels} value` (each must parse), summed by name."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \w+ ", line), line
            continue
        assert SAMPLE.match(line), line
        name, value = line.split("{")[0].split(" ")[0], line.rsplit(" ", 1)[1]
        out[name] = out.get(name, 0.0) + float(value)
    return out


def test_embeddings_match_offline_encode(minilm):
    async def scenario():
        async with serving({"mini": minilm}) as (_, client):
            r = await client.post("/v1/embeddings", json={"input": TEXTS, "model": "mini", "user": "u1"})
            one = await client.post("/v1/embeddings", json={"input": TEXTS[2]})  # the only model: model may be left out
            return r, one

    r, one = asyncio.run(scenario())
    expected = minilm.encode(TEXTS)
    np.testing.assert_allclose(vectors(r), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(vectors(one), expected[2:3], rtol=0, atol=TOLERANCE)
    body = r.json()
    tokens = sum(len(s) for s in minilm.tokenize(TEXTS).ids)
    assert body["object"] == "list" and body["model"] == "mini"
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "truncated": 1}  # "ok " * 300 was cut


def test_base64_dimensions_and_prompts(minilm):
    async def scenario():
        async with serving({"mini": minilm}) as (_, client):
            floats = await client.post("/v1/embeddings", json={"input": TEXTS[:3], "dimensions": 64})
            packed = await client.post(
                "/v1/embeddings", json={"input": TEXTS[:3], "dimensions": 64, "encoding_format": "base64"}
            )
            prompted = await client.post("/v1/embeddings", json={"input": TEXTS[:3], "prompt": "query: "})
            return floats, packed, prompted

    floats, packed, prompted = asyncio.run(scenario())
    np.testing.assert_allclose(vectors(floats), minilm.encode(TEXTS[:3], dimensions=64), rtol=0, atol=TOLERANCE)
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed.json()["data"]]
    np.testing.assert_array_equal(np.stack(decoded), vectors(floats))  # the same float32 bytes
    np.testing.assert_allclose(vectors(prompted), minilm.encode(TEXTS[:3], prompt="query: "), rtol=0, atol=TOLERANCE)


def test_token_id_inputs_run_as_given(minilm):
    ids, _ = minilm.tokenizer.encode(TEXTS[:3])
    long_ids = [101] + [2204] * 300 + [102]

    async def scenario():
        async with serving({"mini": minilm}) as (_, client):
            lists = await client.post("/v1/embeddings", json={"input": ids})
            flat = await client.post("/v1/embeddings", json={"input": ids[2]})
            cut = await client.post("/v1/embeddings", json={"input": [ids[0], long_ids]})
            first = await client.post("/v1/embeddings", json={"input": long_ids[:256]})
            refused = await client.post("/v1/embeddings", json={"input": [ids[0], long_ids], "truncate": False})
            with_prompt = await client.post("/v1/embeddings", json={"input": ids, "prompt_name": "query"})
            outside = await client.post("/v1/embeddings", json={"input": [[101, 10**6]]})
            return lists, flat, cut, first, refused, with_prompt, outside

    lists, flat, cut, first, refused, with_prompt, outside = asyncio.run(scenario())
    expected = minilm.encode(TEXTS[:3])  # the same ids, tokenized by encode
    np.testing.assert_allclose(vectors(lists), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(vectors(flat), expected[2:3], rtol=0, atol=TOLERANCE)
    assert cut.json()["usage"]["truncated"] == 1 and cut.json()["usage"]["prompt_tokens"] == len(ids[0]) + 256
    np.testing.assert_allclose(vectors(cut)[1], vectors(first)[0], rtol=0, atol=TOLERANCE)  # the first 256 ids
    assert refused.status_code == 413 and refused.json()["error"]["param"] == "input[1]"
    assert "302 tokens" in refused.json()["error"]["message"]
    assert with_prompt.status_code == 400 and "token-id inputs run as given" in with_prompt.text
    assert outside.status_code == 400 and "outside the vocabulary" in outside.text


def test_concurrent_requests_are_batched_and_correct(minilm):
    short = [t[:60] for t in TEXTS]
    requests = [short[i % 5 : i % 5 + 1 + i % 3] for i in range(20)]  # 1 to 3 texts each, mixed lengths

    async def scenario():
        async with serving({"mini": minilm}, max_wait_ms=200) as (_, client):
            answers = await asyncio.gather(*(client.post("/v1/embeddings", json={"input": r}) for r in requests))
            return answers, parse_metrics((await client.get("/metrics")).text)

    answers, metrics = asyncio.run(scenario())
    expected = dict(zip(short, minilm.encode(short), strict=True))
    for texts, answer in zip(requests, answers, strict=True):
        np.testing.assert_allclose(vectors(answer), [expected[t] for t in texts], rtol=0, atol=TOLERANCE)
    assert metrics["embzoo_batch_requests_sum"] == 20
    assert metrics["embzoo_batch_requests_count"] < 5  # merged: far fewer forwards than requests
    assert metrics["embzoo_requests_total"] == 20


def test_rerank_and_score_match_rank_and_score(minilm, make_checkpoint):
    folder, _ = bert_checkpoint(make_checkpoint)
    reranker = embzoo.load(folder, device="cpu")
    query = "how do rotary embeddings work?"
    documents = [DOCS[0], {"text": DOCS[1]}, DOCS[2]]
    ask = {"query": query, "documents": DOCS}

    async def scenario():
        async with serving({"mini": minilm, "ce": reranker}) as (_, client):
            post = client.post
            return [
                await post("/v1/rerank", json={"model": "ce", "query": query, "documents": documents, "top_n": 2}),
                await post("/v1/rerank", json={"model": "mini", **ask}),
                await post("/v1/rerank", json={"model": "ce", **ask, "return_documents": False}),
                await post("/v1/score", json={"model": "ce", "text_1": query, "text_2": DOCS}),
                await post("/v1/score", json={"model": "mini", "text_1": DOCS, "text_2": DOCS[::-1]}),
                await post("/v1/score", json={"model": "ce", "text_1": DOCS[:2], "text_2": DOCS}),
                await post("/v1/embeddings", json={"model": "ce", "input": "x"}),
                await post("/v1/rerank", json={"model": "mini", **ask, "instruction": "x"}),
            ]

    ce, mini, bare, score_ce, score_mini, uneven, embed_ce, instructed = asyncio.run(scenario())
    want = reranker.rank(query, DOCS, top_k=2)
    assert [r["index"] for r in ce.json()["results"]] == [w["index"] for w in want]
    got = [r["relevance_score"] for r in ce.json()["results"]]
    np.testing.assert_allclose(got, [w["score"] for w in want], atol=1e-6)
    assert [r["document"]["text"] for r in ce.json()["results"]] == [DOCS[w["index"]] for w in want]
    pair_tokens = [len(ids) for ids in reranker.inputs.encode([query] * 3, DOCS, None).ids]
    assert ce.json()["model"] == "ce" and ce.json()["usage"] == {"total_tokens": sum(pair_tokens), "documents": 3}
    text_tokens = sum(len(ids) for ids in minilm.tokenize([query, *DOCS]).ids)
    assert mini.json()["usage"] == {"total_tokens": text_tokens, "documents": 3}
    assert score_ce.json()["usage"] == {"prompt_tokens": sum(pair_tokens), "total_tokens": sum(pair_tokens), "pairs": 3}
    assert score_mini.json()["usage"]["total_tokens"] == 2 * sum(len(ids) for ids in minilm.tokenize(DOCS).ids)
    assert [r["index"] for r in mini.json()["results"]] == [w["index"] for w in minilm.rank(query, DOCS)]
    assert all("document" not in r for r in bare.json()["results"])
    data = score_ce.json()["data"]
    np.testing.assert_allclose([d["score"] for d in data], reranker.score([(query, d) for d in DOCS]), atol=1e-6)
    pairs = list(zip(DOCS, DOCS[::-1], strict=True))
    np.testing.assert_allclose([d["score"] for d in score_mini.json()["data"]], minilm.score(pairs), atol=1e-6)
    assert uneven.status_code == 400 and "lists of equal length" in uneven.text
    assert embed_ce.status_code == 400 and "use /v1/rerank or /v1/score" in embed_ce.text
    assert instructed.status_code == 400 and instructed.json()["error"]["param"] == "instruction"


def test_bad_requests_are_explained(minilm):
    async def scenario():
        async with serving({"mini": minilm}, max_inputs_per_request=4) as (_, client):
            post = client.post
            json_type = {"content-type": "application/json"}
            return [
                await post("/v1/embeddings", content=b'{"input": ', headers=json_type),
                await post("/v1/embeddings", json={"input": "x", "dimensions": "64"}),
                await post("/v1/embeddings", json={"input": ["a", 3]}),
                await post("/v1/embeddings", json={"input": []}),
                await post("/v1/embeddings", json={"model": "mini"}),
                await post("/v1/rerank", json={"query": "q", "documents": ["a", {"txt": "b"}]}),
                await post("/v1/embeddings", json={"input": "x", "model": "gpt-4"}),
                await post("/v1/embeddings", json={"input": ["x"] * 5}),
                await post("/v1/embeddings", json={"input": "x", "dimensions": 385}),
                await post("/v1/embeddings", json={"input": "x", "prompt_name": "nope"}),
                await post("/v1/embeddings", json={"input": "ok " * 300, "truncate": False}),
            ]

    answers = asyncio.run(scenario())
    expected = [
        (400, "not valid JSON"),
        (400, "dimensions: Input should be a valid integer"),
        (400, "input[1] is a number"),
        (400, "input is an empty list"),
        (400, "input: Field required"),
        (400, "documents[1] is an object"),
        (404, "model 'gpt-4' is not served here; this server runs mini"),
        (413, "input has 5 items, more than this server takes per request (4)"),
        (400, "dimensions must be in 1..384"),
        (400, "unknown prompt_name 'nope'"),
        (413, "input 0 has 302 tokens, more than mini's limit of 256"),
    ]
    assert_errors(answers, expected)


def test_api_key(minilm):
    async def scenario():
        async with serving({"mini": minilm}, api_key="s3cret") as (_, client):
            return [
                await client.post("/v1/embeddings", json={"input": "x"}),
                await client.get("/v1/models", headers={"Authorization": "Bearer wrong"}),
                await client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}),
                await client.get("/health"),
            ]

    missing, wrong, ok, health = asyncio.run(scenario())
    assert missing.status_code == 401 and "no Authorization header" in missing.text
    assert wrong.status_code == 401 and "wrong API key" in wrong.text
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "mini" and ok.json()["object"] == "list"
    assert ok.json()["data"][0]["max_model_len"] == 256
    assert health.status_code == 200 and health.json()["status"] == "ok"


def blocked(app):
    """A job holding the model's thread until released: (the job's task, started, release)."""
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(60)

    task = asyncio.ensure_future(app.state.service.batchers["mini"].call(hold))
    return task, started, release


async def until(condition):
    """Wait for condition() up to 30 s (a loaded CI machine can be slow; a passing run waits milliseconds)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_full_queue_answers_429(minilm):
    async def scenario():
        async with serving({"mini": minilm}, max_queue=1) as (app, client):
            holder, started, release = blocked(app)
            await asyncio.to_thread(started.wait, 60)
            queued = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "queued"}))
            await until(lambda: app.state.service.batchers["mini"].depth == 1)
            refused = await client.post("/v1/embeddings", json={"input": "refused"})
            release.set()
            return refused, await queued, await holder

    refused, queued, _ = asyncio.run(scenario())
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "1 requests queued" in refused.json()["error"]["message"]
    np.testing.assert_allclose(vectors(queued)[0], minilm.encode("queued"), rtol=0, atol=TOLERANCE)


def test_shutdown_finishes_queued_work(minilm):
    async def scenario():
        app, lifespan = await started_app({"mini": minilm})
        async with client_for(app) as client:
            holder, started, release = blocked(app)
            await asyncio.to_thread(started.wait, 60)
            queued = [asyncio.ensure_future(client.post("/v1/embeddings", json={"input": t})) for t in TEXTS[:3]]
            await until(lambda: app.state.service.batchers["mini"].depth == 3)
            stopping = asyncio.ensure_future(lifespan.__aexit__(None, None, None))
            await until(lambda: app.state.service.closing)
            late = await client.post("/v1/embeddings", json={"input": "too late"})
            health = await client.get("/health")
            release.set()
            await stopping
            return [await q for q in queued], late, health

    queued, late, health = asyncio.run(scenario())
    np.testing.assert_allclose(np.concatenate([vectors(q) for q in queued]), minilm.encode(TEXTS[:3]), atol=TOLERANCE)
    assert late.status_code == 503 and "shutting down" in late.text
    assert health.status_code == 503


def test_shutdown_answers_a_request_still_tokenizing(minilm, monkeypatch):
    """A request admitted before shutdown began (it holds a queue slot while it tokenizes) is answered, not 503."""
    tokenizing, go = threading.Event(), threading.Event()
    tokenize = minilm.tokenize

    def slow_tokenize(*args, **kwargs):
        tokenizing.set()
        go.wait(60)
        return tokenize(*args, **kwargs)

    monkeypatch.setattr(minilm, "tokenize", slow_tokenize)

    async def scenario():
        app, lifespan = await started_app({"mini": minilm})
        async with client_for(app) as client:
            admitted = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": TEXTS[2]}))
            await asyncio.to_thread(tokenizing.wait, 60)
            stopping = asyncio.ensure_future(lifespan.__aexit__(None, None, None))
            await until(lambda: app.state.service.closing)
            late = await client.post("/v1/embeddings", json={"input": "too late"})
            go.set()
            answer = await admitted
            await stopping
            return answer, late

    answer, late = asyncio.run(scenario())
    np.testing.assert_allclose(vectors(answer), minilm.encode([TEXTS[2]]), atol=TOLERANCE)
    assert late.status_code == 503


def test_metrics_text(minilm):
    async def scenario():
        async with serving({"mini": minilm}) as (_, client):
            await client.post("/v1/embeddings", json={"input": TEXTS})
            await client.post("/v1/embeddings", json={"input": 1.5})
            await client.get("/nowhere")
            await client.post("/v1/rerank", json={"query": TEXTS[0], "documents": TEXTS[1:3]})
            return await client.get("/metrics")

    r = asyncio.run(scenario())
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    metrics = parse_metrics(r.text)
    reranked = sum(len(s) for s in minilm.tokenize(TEXTS[:3]).ids)  # the query and two documents, truncated
    assert metrics["embzoo_input_tokens_total"] == sum(len(s) for s in minilm.tokenize(TEXTS).ids) + reranked
    assert metrics["embzoo_truncated_inputs_total"] == 1
    assert metrics["embzoo_batch_tokens_count"] == 1 and metrics["embzoo_queue_depth"] == 0
    assert 'embzoo_requests_total{endpoint="/v1/embeddings",status="200"} 1' in r.text
    assert 'embzoo_requests_total{endpoint="/v1/embeddings",status="400"} 1' in r.text
    assert 'embzoo_requests_total{endpoint="other",status="404"} 1' in r.text
    assert 'embzoo_request_duration_seconds_count{endpoint="/v1/embeddings"} 2' in r.text


def test_metrics_registry_renders_the_exposition_format():
    m = Metrics()
    m.declare("h", "histogram", "a histogram", (1, 10))
    m.declare("c", "counter", "a counter")
    for value in (0.5, 5, 50):
        m.observe("h", value, model='a"b')
    m.inc("c", 2, endpoint="/x")
    assert m.render().splitlines() == [
        "# HELP h a histogram",
        "# TYPE h histogram",
        'h_bucket{model="a\\"b",le="1"} 1',
        'h_bucket{model="a\\"b",le="10"} 2',
        'h_bucket{model="a\\"b",le="+Inf"} 3',
        'h_sum{model="a\\"b"} 55.5',
        'h_count{model="a\\"b"} 3',
        "# HELP c a counter",
        "# TYPE c counter",
        'c{endpoint="/x"} 2',
    ]
    with pytest.raises(ValueError, match="only goes up"):
        m.inc("c", -1)


def test_cli_serve(minilm_dir, monkeypatch):
    import uvicorn

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: ran.update(app=app, **kwargs))
    monkeypatch.setenv("EMBZOO_API_KEY", "from-env")
    main(["serve", "--model", f"mini={minilm_dir}", "--device", "cpu", "--port", "8123", "--max-queue", "7"])
    service = ran["app"].state.service
    assert list(service.models) == ["mini"] and isinstance(service.models["mini"], embzoo.Embedder)
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 8123)
    assert service.settings == ServerSettings(api_key="from-env", max_queue=7)
    with pytest.raises(SystemExit, match="two models named 'm'"):
        main(["serve", "--model", f"m={minilm_dir}", "--model", f"m={minilm_dir}", "--device", "cpu"])
    with pytest.raises(SystemExit, match="max_queue=0; the limits must be positive"):
        main(["serve", "--model", f"mini={minilm_dir}", "--device", "cpu", "--max-queue", "0"])
    with pytest.raises(SystemExit, match="embzoo serve: .*nowhere"):
        main(["serve", "--model", str(Path(minilm_dir) / "nowhere"), "--device", "cpu"])


def test_cli_serve_adapters_and_quantization(minilm_dir, tmp_path, tokenizer_dir, monkeypatch):
    import uvicorn
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3Model

    from embzoo.modeling.fp8_linear import Fp8Linear

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: ran.update(app=app))
    torch.manual_seed(0)
    base = save_checkpoint(Qwen3Model(Qwen3Config(**TINY_QWEN3)), tmp_path / "base", tokenizer_dir)
    lora = LoraConfig(init_lora_weights=False, target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)
    get_peft_model(Qwen3Model.from_pretrained(base), lora).save_pretrained(tmp_path / "a")
    models = ["--model", f"q={base}", "--model", f"mini={minilm_dir}", "--device", "cpu"]
    main(["serve", *models, "--adapter", f"q:a={tmp_path / 'a'}"])
    served = ran["app"].state.service.models
    assert served["q"].adapters.names == ["a"] and served["mini"].adapters is None
    for spec, message in [
        (f"a={tmp_path / 'a'}", "MODEL:NAME=FOLDER when serving several models"),
        (f"other:a={tmp_path / 'a'}", "no model named 'other'; served: q, mini"),
        ("q:a=", "give NAME=FOLDER"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main(["serve", *models, "--adapter", spec])
    main(["serve", "--model", f"{base}", "--adapter", f"a={tmp_path / 'a'}", "--device", "cpu"])  # one model: no MODEL
    assert ran["app"].state.service.models[str(base)].adapters.names == ["a"]
    main(["serve", "--model", f"mini={minilm_dir}", "--device", "cpu", "--quantization", "fp8"])
    assert isinstance(ran["app"].state.service.models["mini"].model.backbone.layers[0].mlp.up, Fp8Linear)


def test_load_test_runs_without_errors(minilm, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "bench"))
    from load_test import run_load_test

    with pytest.raises(ValueError, match="max_inputs must be in 1..pool_size"):
        run_load_test(minilm, max_inputs=17, pool_size=16)
    settings = ServerSettings(max_wait_ms=20)
    report = run_load_test(minilm, clients=4, seconds=1.5, max_inputs=3, pool_size=16, settings=settings)
    assert report["errors"] == 0, report["error_messages"]
    assert report["requests"] >= 4 and report["p50_ms"] <= report["p99_ms"]
    refused = run_load_test(
        minilm, clients=1, seconds=0.3, max_inputs=1, pool_size=4, settings=ServerSettings(max_request_bytes=10)
    )  # every request answers 413: none counts in throughput or latency
    assert refused["errors"] >= 1 and refused["requests"] == 0 and refused["p50_ms"] is None


def test_model_inputs_concat_fills_what_none_means():
    a = ModelInputs([[1, 2, 3]], truncated=1, skips=np.array([2]), keep=[np.array([True, False, True])])
    b = ModelInputs([[4, 5]], truncated=0, key_lengths=[1])
    both = ModelInputs.concat([a, b])
    assert both.ids == [[1, 2, 3], [4, 5]] and both.truncated == 1
    assert both.skips.tolist() == [2, 0] and both.key_lengths == [3, 1]
    assert [k.tolist() for k in both.keep] == [[True, False, True], [True, True]]
    assert ModelInputs.concat([b, b]).skips is None


def test_lengths_count_tokens_before_truncation(minilm_dir):
    tok = TextTokenizer.from_folder(minilm_dir, 16, end_token="[MASK]")  # every input ends with [MASK]
    texts = ["word " * 40, "short"]
    ids, cut = tok.encode(texts)
    assert cut == 1 and len(ids[0]) == 16 and tok.lengths(texts) == [1 + 40 + 1 + 1, len(ids[1])]


@pytest.mark.parametrize(
    "hub_id", ["sentence-transformers/all-MiniLM-L6-v2", "cross-encoder/ms-marco-MiniLM-L6-v2", "naver/splade-v3"]
)
def test_the_model_cards_requests_are_served(hub_id, minilm, make_checkpoint):
    """The curl request each card prints is one the server answers (the model under the card's name)."""
    import shlex

    from embzoo.catalog import lookup
    from embzoo.model_cards import card_body

    body = card_body(lookup(hub_id))
    command = next(line for line in body.splitlines() if line.startswith("curl "))
    words = shlex.split(command)
    path = words[2].removeprefix("localhost:8000")
    payload = json.loads(words[words.index("-d") + 1])
    if hub_id == "naver/splade-v3":
        from test_splade import splade_folder

        model = embzoo.load(splade_folder(make_checkpoint)[0], device="cpu")
    elif hub_id.startswith("cross-encoder"):
        model = embzoo.load(bert_checkpoint(make_checkpoint)[0], device="cpu")
    else:
        model = minilm

    async def go():
        async with serving({hub_id: model}) as (_, client):
            return await client.post(path, json=payload)

    response = asyncio.run(go())
    assert response.status_code == 200, response.text


def test_api_key_is_checked_under_a_mount_prefix(minilm):
    from fastapi import FastAPI

    async def scenario():
        app = create_app({"mini": minilm}, ServerSettings(api_key="s3cret"))
        parent = FastAPI()
        parent.mount("/embed", app)
        async with app.router.lifespan_context(app), client_for(parent) as client:
            return [
                await client.post("/embed/v1/embeddings", json={"input": "x"}),
                await client.get("/embed/v1/models", headers={"Authorization": "bearer s3cret"}),
                await client.get("/embed/openapi.json"),
                await client.get("/embed/docs"),
            ]

    missing, lower_case, openapi, docs = asyncio.run(scenario())
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert lower_case.status_code == 200
    assert openapi.status_code == 404 and docs.status_code == 404  # no API description without the key


def test_model_failures_answer_500_and_fail_only_their_job(minilm):
    async def scenario():
        async with serving({"mini": minilm}, max_wait_ms=200) as (app, client):
            batcher = app.state.service.batchers["mini"]
            forward = batcher.embed_fn
            failures = [RuntimeError("CUDA out of memory"), ValueError("internal shape mismatch")]

            def flaky(inputs):
                if failures:
                    raise failures.pop(0)
                return forward(inputs)

            batcher.embed_fn = flaky
            runtime = await client.post("/v1/embeddings", json={"input": "x"})
            value = await client.post("/v1/embeddings", json={"input": "x"})
            after = await client.post("/v1/embeddings", json={"input": "x"})
            batcher.embed_fn = lambda inputs: forward(inputs) * float("nan")
            nan = await client.post("/v1/embeddings", json={"input": "x"})
            batcher.embed_fn = forward

            def broken(rows):
                raise RuntimeError("finish failed")

            merged = await asyncio.gather(
                batcher.embed(minilm.tokenize(["a"]), broken),
                batcher.embed(minilm.tokenize(["b", "c"]), lambda rows: rows.shape),
                return_exceptions=True,
            )
            return runtime, value, after, nan, merged, await client.get("/nowhere"), await client.get("/v1/score")

    runtime, value, after, nan, merged, nowhere, method = asyncio.run(scenario())
    for failed in (runtime, value, nan):
        assert failed.status_code == 500, failed.text
        error = failed.json()["error"]
        assert error["message"] == "internal error" and error["type"] == "server_error"
    assert after.status_code == 200
    assert isinstance(merged[0], RuntimeError) and tuple(merged[1]) == (2, 384)
    assert nowhere.status_code == 404 and nowhere.json()["error"]["type"] == "not_found_error"
    assert method.status_code == 405 and "does not take GET" in method.json()["error"]["message"]


def test_back_pressure_before_tokenizing(minilm, monkeypatch):
    tokenized = []
    tokenize = minilm.tokenize
    monkeypatch.setattr(minilm, "tokenize", lambda *a, **k: tokenized.append(1) or tokenize(*a, **k))

    async def chunks():
        yield b'{"input": "'
        yield b"x" * 300
        yield b'"}'

    async def scenario():
        async with serving({"mini": minilm}, max_queue=2, max_queue_tokens=10, max_request_bytes=200) as (app, client):
            batcher = app.state.service.batchers["mini"]
            holder, started, release = blocked(app)
            await asyncio.to_thread(started.wait, 60)
            queued = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "a b c d e"}))
            await until(lambda: batcher.depth == 1)
            tokens = await client.post("/v1/embeddings", json={"input": "f g h i j"})  # 7 + 7 tokens: over 10
            cancelled = asyncio.ensure_future(client.post("/v1/embeddings", json={"input": "k"}))
            await until(lambda: batcher.depth == 2)
            cancelled.cancel()  # the client went away: its slot is free again
            await until(lambda: batcher.depth == 1)
            blocking = batcher.call(lambda: None)
            full = asyncio.ensure_future(blocking)
            await until(lambda: batcher.depth == 2)
            calls = len(tokenized)
            refused = await client.post("/v1/embeddings", json={"input": "refused"})
            refused_calls = len(tokenized) - calls
            big = await client.post("/v1/embeddings", json={"input": "x" * 300})
            json_type = {"content-type": "application/json"}
            chunked = await client.post("/v1/embeddings", content=chunks(), headers=json_type)
            release.set()
            await full
            return tokens, refused, refused_calls, big, chunked, await queued, await holder

    tokens, refused, refused_calls, big, chunked, queued, _ = asyncio.run(scenario())
    assert tokens.status_code == 429 and "--max-queue-tokens" in tokens.json()["error"]["message"]
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1" and refused_calls == 0
    assert big.status_code == 413 and "limit of 200 bytes" in big.json()["error"]["message"]
    assert chunked.status_code == 413 and "limit of 200 bytes" in chunked.json()["error"]["message"]
    assert queued.status_code == 200


def test_refusing_an_over_long_input_measures_only_the_cut_texts(minilm, monkeypatch):
    from embzoo.api import InputTooLong

    measured = []
    lengths = minilm.tokenizer.lengths
    monkeypatch.setattr(minilm.tokenizer, "lengths", lambda texts: measured.extend(texts) or lengths(texts))
    with pytest.raises(InputTooLong) as refused:
        minilm.tokenize(["short"] * 50 + ["ok " * 300], truncate=False)
    assert (refused.value.index, refused.value.length) == (50, 302) and len(measured) == 1


def test_requests_encode_would_answer_differently_are_refused(minilm, monkeypatch):
    ids = [[101, 2204, 102]]

    async def post(body):
        async with serving({"mini": minilm}) as (_, client):
            return await client.post("/v1/embeddings", json=body)

    no_task = asyncio.run(post({"input": "x", "task": "retrieval.query"}))
    assert no_task.status_code == 400 and no_task.json()["error"]["param"] == "task"
    assert "all-MiniLM-L6-v2 has no task adapters; leave task out" in no_task.json()["error"]["message"]
    no_adapter = asyncio.run(post({"input": "x", "adapter": "a"}))
    assert no_adapter.status_code == 400 and no_adapter.json()["error"]["param"] == "adapter"
    assert "no named adapters" in no_adapter.json()["error"]["message"]
    monkeypatch.setattr(minilm, "instruction_mask", "text_tokens")  # LLM2Vec: the pool's skips come from the text
    masked = asyncio.run(post({"input": ids}))
    assert masked.status_code == 400 and "instruction_mask='text_tokens'" in masked.json()["error"]["message"]


def test_task_requests_match_encode_and_batch_by_task(make_checkpoint):
    from families.test_jina_embeddings_v3 import SMALL, build_native, lora_factors, to_original

    folder, ref = build_native(make_checkpoint)
    folder = to_original(folder, ref.state_dict(), lora_factors(ref.state_dict(), SMALL["num_hidden_layers"]))
    jina = embzoo.load(folder, device="cpu")
    asked = [("retrieval.query", DOCS[:2]), (None, DOCS), ("retrieval.passage", DOCS), ("retrieval.query", DOCS[2:])]

    async def scenario():
        async with serving({"jina": jina}, max_wait_ms=50) as (app, client):
            batcher = app.state.service.batchers["jina"]
            forward, calls = batcher.embed_fn, []
            batcher.embed_fn = lambda inputs, **weights: (
                calls.append((len(inputs.ids), weights)) or forward(inputs, **weights)
            )
            bodies = [{"input": texts} | ({"task": task} if task else {}) for task, texts in asked]
            answers = await asyncio.gather(*(client.post("/v1/embeddings", json=b) for b in bodies))
            ids = await client.post("/v1/embeddings", json={"input": [[0, 5, 2]], "task": "retrieval.query"})
            unknown = await client.post("/v1/embeddings", json={"input": "x", "task": "retrieval"})
            return answers, calls, ids, unknown

    answers, calls, ids, unknown = asyncio.run(scenario())
    for (task, texts), answer in zip(asked, answers, strict=True):
        np.testing.assert_allclose(vectors(answer), jina.encode(texts, task=task), rtol=0, atol=1e-5)
    rows: dict[str | None, int] = {}  # a merged batch runs one task: each task's rows add up to its requests'
    for count, weights in calls:
        rows[weights.get("task")] = rows.get(weights.get("task"), 0) + count
    assert rows == {"retrieval.query": 3, None: 3, "retrieval.passage": 3}
    assert ids.status_code == 400 and "its instruction is added to the text" in ids.json()["error"]["message"]
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "task"
    assert "unknown task 'retrieval'" in unknown.json()["error"]["message"]


def test_adapter_requests_match_encode(tmp_path, tokenizer_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    base = save_checkpoint(Qwen3Model(Qwen3Config(**TINY_QWEN3)), tmp_path / "base", tokenizer_dir)
    lora = LoraConfig(init_lora_weights=False, target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)
    get_peft_model(Qwen3Model.from_pretrained(base), lora).save_pretrained(tmp_path / "a")
    model = embzoo.load(base, device="cpu", adapters={"a": tmp_path / "a"})

    async def scenario():
        async with serving({"q": model}) as (_, client):
            return await asyncio.gather(
                client.post("/v1/embeddings", json={"input": DOCS, "adapter": "a"}),
                client.post("/v1/embeddings", json={"input": DOCS}),
                client.post("/v1/embeddings", json={"input": DOCS, "adapter": "b"}),
            )

    adapted, plain, unknown = asyncio.run(scenario())
    np.testing.assert_allclose(vectors(adapted), model.encode(DOCS, adapter="a"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(vectors(plain), model.encode(DOCS), rtol=0, atol=1e-5)
    assert not np.allclose(vectors(adapted), vectors(plain), atol=1e-3)
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "adapter"


def test_health_answers_503_when_a_worker_died(minilm):
    async def scenario():
        async with serving({"mini": minilm}) as (app, client):
            ok = await client.get("/health")
            worker = app.state.service.batchers["mini"]._worker
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            return ok, await client.get("/health")

    ok, dead = asyncio.run(scenario())
    assert ok.status_code == 200
    assert dead.status_code == 503 and dead.json()["status"] == "the worker of mini stopped"


def test_more_bad_requests_are_explained(minilm):
    async def scenario():
        async with serving({"a": minilm, "b": minilm}) as (_, client):
            return [
                await client.post("/v1/embeddings", json={"input": "x"}),
                await client.post("/v1/embeddings", json={"input": "x", "model": "c"}),
                await client.post("/v1/embeddings", json=["x"]),
                await client.post("/v1/embeddings", json={"input": [[101, 102], []], "model": "a"}),
            ]

    answers = asyncio.run(scenario())
    expected = [
        (400, "pass model: this server runs a, b"),
        (404, "model 'c' is not served here; this server runs a, b"),
        (400, "the request body must be a JSON object"),
        (400, "token-id input 1 is empty"),
    ]
    assert_errors(answers, expected)
