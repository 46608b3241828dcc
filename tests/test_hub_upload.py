"""hub_upload.py: the folder is validated by loading it, its README gets the card metadata (merged into an existing
one), --dry-run prints the plan and touches nothing, and the Hub calls are create_repo then upload_folder. The Hub is
unreachable in CI: HfApi is replaced by a recorder."""

import importlib.util
from pathlib import Path

import pytest
from transformers import BertConfig, BertForSequenceClassification, BertModel

from embzoo.catalog import lookup
from embzoo.model_cards import card_body, split_front_matter

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("hub_upload", ROOT / "hub_upload.py")
hub_upload = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hub_upload)

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
REPO = "someone/tiny-model"


class RecordingApi:
    """HfApi stand-in: records each call in order (the class attribute `calls`, reset per test)."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setattr(RecordingApi, "calls", [])
    monkeypatch.setattr(hub_upload, "HfApi", RecordingApi)
    return RecordingApi


@pytest.fixture
def embedder_dir(make_checkpoint):
    return make_checkpoint(BertModel, BertConfig(**TINY, max_position_embeddings=64), name="embedder")[0]


@pytest.fixture
def reranker_dir(make_checkpoint):
    config = BertConfig(**TINY, max_position_embeddings=64, num_labels=1)
    return make_checkpoint(BertForSequenceClassification, config, name="reranker")[0]


def test_dry_run_prints_every_file_with_its_size_and_the_front_matter(embedder_dir, api, capsys):
    (embedder_dir / ".git").mkdir()
    (embedder_dir / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert hub_upload.main([str(embedder_dir), REPO, "--dry-run", "--tag", "mine"]) == 0
    out = capsys.readouterr().out
    assert api.calls == [] and not (embedder_dir / "README.md").exists()
    files = [p for p in embedder_dir.iterdir() if p.is_file()]
    for p in files:
        assert f"  {p.name}  {p.stat().st_size} bytes\n" in out
    assert ".git" not in out  # upload_folder's default ignore patterns
    front = out[out.index("README.md front matter:\n") + len("README.md front matter:\n") :]
    metadata, rest = split_front_matter(front)
    assert rest == ""
    assert metadata == {"library_name": "embzoo", "pipeline_tag": "sentence-similarity", "tags": ["embzoo", "mine"]}
    readme_size = int(out.split("  README.md  ")[1].split(" bytes")[0])
    assert f"total: {len(files) + 1} files" in out and readme_size > 0


def test_upload_writes_the_card_then_creates_the_repo_and_uploads_the_folder(embedder_dir, api, capsys):
    hub_upload.main([str(embedder_dir), REPO, "--private", "--token", "tok", "--commit-message", "first"])
    assert api.calls == [
        ("create_repo", REPO, {"exist_ok": True, "private": True, "token": "tok"}),
        ("upload_folder", {"folder_path": embedder_dir, "repo_id": REPO, "commit_message": "first", "token": "tok"}),
    ]
    metadata, body = split_front_matter((embedder_dir / "README.md").read_text())
    assert metadata["library_name"] == "embzoo" and "base_model" not in metadata
    assert f'embzoo.load("{REPO}")' in body and "m.encode(" in body
    assert (
        f"uploaded {len(list(embedder_dir.iterdir()))} files to https://huggingface.co/{REPO}"
        in capsys.readouterr().out
    )


def test_an_existing_readme_keeps_its_body_and_other_metadata(embedder_dir, api):
    body = "\n# My model\n\nTrained on my data.  \nTwo trailing spaces above.\n"
    readme = "---\nlicense: mit\npipeline_tag: feature-extraction\ntags:\n- custom\n- embzoo\n---\n" + body
    (embedder_dir / "README.md").write_text(readme)
    hub_upload.main([str(embedder_dir), REPO, "--base-model", "my/base"])
    metadata, kept = split_front_matter((embedder_dir / "README.md").read_text())
    assert kept == body
    assert metadata == {
        "license": "mit",
        "pipeline_tag": "sentence-similarity",
        "tags": ["custom", "embzoo"],
        "library_name": "embzoo",
        "base_model": "my/base",
    }


def test_a_copy_of_a_catalogued_reranker_gets_its_card(reranker_dir, api):
    hub_upload.main([str(reranker_dir), REPO, "--recipe", "BAAI/bge-reranker-base"])
    metadata, body = split_front_matter((reranker_dir / "README.md").read_text())
    assert metadata["pipeline_tag"] == "text-ranking" and metadata["base_model"] == "BAAI/bge-reranker-base"
    assert metadata["license"] == "mit" and {"cross-encoder", "reranker"} <= set(metadata["tags"])
    assert body == "\n" + card_body(lookup("BAAI/bge-reranker-base"), repo_id=REPO)
    assert f'embzoo.load("{REPO}", recipe="BAAI/bge-reranker-base")' in body


def test_an_embzoo_folder_brings_its_recipe_and_says_what_it_is(reranker_dir, api, tmp_path):
    from embzoo.conversion.convert import convert_model

    convert_model(reranker_dir, tmp_path / "converted", recipe="BAAI/bge-reranker-base")
    hub_upload.main([str(tmp_path / "converted"), REPO])  # no --recipe: the folder's own
    metadata, body = split_front_matter((tmp_path / "converted" / "README.md").read_text())
    assert metadata["base_model"] == "BAAI/bge-reranker-base"
    assert body == "\n" + card_body(lookup("BAAI/bge-reranker-base"), repo_id=REPO, converted=True)
    assert "converted by `embzoo convert`" in body and "sentence-transformers does not read" in body


def test_a_base_model_outside_the_catalog_gets_a_plain_card(reranker_dir, api):
    hub_upload.main([str(reranker_dir), REPO, "--base-model", "my/base"])
    metadata, body = split_front_matter((reranker_dir / "README.md").read_text())
    assert metadata["base_model"] == "my/base" and "license" not in metadata
    assert "m.rank(" in body


@pytest.mark.parametrize(
    "files, message",
    [
        (None, "not a folder"),
        ({}, "embzoo cannot load it"),
        ({"config.json": '{"model_type": "bert"}'}, "embzoo cannot load it"),
    ],
)
def test_a_folder_embzoo_cannot_load_is_not_uploaded(tmp_path, api, files, message):
    src = tmp_path / "src"
    if files is not None:
        src.mkdir()
        for name, text in files.items():
            (src / name).write_text(text)
    with pytest.raises(SystemExit, match=message):
        hub_upload.main([str(src), REPO])
    assert api.calls == [] and not (src / "README.md").exists()
