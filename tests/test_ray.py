"""embzoo.integrations.ray on a local Ray instance with two CPU workers and the real MiniLM: embed_dataset and
score_dataset give what Embedder.encode / score give offline, row for row, with the other columns kept."""

import logging

import numpy as np
import pytest
from test_encode import tiny_folder

import embzoo

pytest.importorskip("ray.data")
import ray  # noqa: E402

from embzoo.integrations.ray import EmbedBatches, ScoreBatches, _load, embed_dataset, score_dataset  # noqa: E402

pytestmark = pytest.mark.slow

TEXTS = [f"{word} " * (i % 7 + 1) + f"sentence {i}" for i, word in enumerate(["cat", "rope", "river", "", "café"] * 6)]
# packed neighbours change the float32 rounding of the forward (see test_server's TOLERANCE)
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray with 2 CPUs, no dashboard, a small object store in its own temporary folder, quiet logs; Ray Data
    keeps the input order. Shut down after the module."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        object_store_memory=80 * 2**20,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order, context.enable_progress_bars = True, False
    yield
    context.execution_options.preserve_order, context.enable_progress_bars = saved
    ray.shutdown()


@pytest.fixture(scope="module")
def minilm():
    return embzoo.load(device="cpu")


def test_embed_and_score_on_actor_pools_match_encode_and_score(local_ray, minilm_dir, minilm):
    """One run: two embedding actors, then one scoring actor (half a CPU each, so both pools fit 2 CPUs)."""
    rows = [{"id": i, "text": t, "lang": "en" if i % 2 else "fr", "query": "a small pet"} for i, t in enumerate(TEXTS)]
    ds = ray.data.from_items(rows, override_num_blocks=4)
    embedded = embed_dataset(
        ds,
        str(minilm_dir),
        num_workers=2,
        num_cpus_per_worker=0.5,
        batch_size=5,
        batch_tokens=64,
        encode_kwargs={"dimensions": 128, "prompt": "query: "},
    )
    scored = score_dataset(
        embedded, str(minilm_dir), document_column="text", output_column="cosine", num_cpus_per_worker=0.5
    )
    out = scored.take_all()
    assert [{k: r[k] for k in rows[0]} for r in out] == rows  # in order, the other columns kept
    want = minilm.encode(TEXTS, dimensions=128, prompt="query: ")
    np.testing.assert_allclose(np.stack([r["embedding"] for r in out]), want, atol=TOLERANCE, rtol=0)
    want = minilm.score([("a small pet", t) for t in TEXTS])
    np.testing.assert_allclose([r["cosine"] for r in out], want, atol=TOLERANCE, rtol=0)


def test_a_missing_column_is_named(local_ray, minilm_dir):
    """The actor classes themselves, in this process (an actor raises the same error inside Ray)."""
    texts = np.array(TEXTS[:3], dtype=object)
    with pytest.raises(ValueError, match=r"no column 'body'; its columns are \['id', 'text'\]"):
        EmbedBatches(str(minilm_dir), "body", "embedding", {}, {})({"id": np.arange(3), "text": texts})
    with pytest.raises(ValueError, match="no column 'query'"):
        ScoreBatches(str(minilm_dir), "query", "text", "score", {}, {})({"text": texts})


def test_a_value_that_is_not_text_is_named(local_ray, minilm_dir):
    """A null (or a number) is refused, not embedded as the string "None" (the actor classes in this process)."""
    embed = EmbedBatches(str(minilm_dir), "text", "embedding", {}, {})
    with pytest.raises(ValueError, match=r"column 'text' holds None \(NoneType\), not a string"):
        embed({"text": np.array(["a", None], dtype=object)})
    score = ScoreBatches(str(minilm_dir), "query", "text", "score", {}, {})
    with pytest.raises(ValueError, match=r"column 'query' holds 3 \(int\)"):
        score({"query": np.array([3], dtype=object), "text": np.array(["a"], dtype=object)})
    assert embed({"text": np.array(["a", "b"])})["embedding"].shape == (2, 384)  # numpy's str_ is text


def test_batch_tokens_is_an_argument_of_its_own(local_ray, minilm_dir):  # from_items needs a Ray
    ds = ray.data.from_items([{"text": "a"}])
    with pytest.raises(ValueError, match="batch_tokens as embed_dataset's"):
        embed_dataset(ds, str(minilm_dir), encode_kwargs={"batch_tokens": 64})
    with pytest.raises(ValueError, match="must be positive"):
        score_dataset(ds, str(minilm_dir), num_workers=0)


@pytest.mark.gpu
def test_a_worker_with_a_gpu_loads_the_model_on_cuda(local_ray, make_checkpoint):
    folder = str(tiny_folder(make_checkpoint, {"pooling_mode": "mean"}))

    @ray.remote(num_gpus=1, num_cpus=0.5)
    def device() -> str:
        return str(_load(folder, {}).device)

    assert ray.get(device.remote()) == "cuda:0"
