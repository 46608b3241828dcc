"""The command line, driven in-process as a user would call it."""

import json

import numpy as np
import pytest

from embzoo.cli import main


def test_demo_ranks_the_matching_sentence_first(capsys):
    main(["demo", "--device", "cpu", "--top-k", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model: sentence-transformers/all-MiniLM-L6-v2")
    assert " 1. " in lines[2] and "cheetah" in lines[2]
    assert len(lines) == 5


def test_embed_writes_json_lines(capsys):
    main(["embed", "--device", "cpu", "first text", "second"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["first text", "second"]
    assert all(len(r["embedding"]) == 384 for r in rows)


def test_embed_with_fp8_weights(capsys):
    import embzoo

    main(["embed", "--device", "cpu", "--quantization", "fp8", "first text", "second"])
    got = np.array([json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()])
    want = embzoo.load(device="cpu", dtype="bfloat16").encode(["first text", "second"])
    cos = np.sum(got * want, axis=1)
    assert cos.min() > 0.98 and cos.max() < 1  # FP8, close to but not the bfloat16 load
    with pytest.raises(SystemExit):
        main(["embed", "--device", "cpu", "--quantization", "int3", "x"])


def test_embed_file_to_npy(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('"plain string"\n{"text": "an object"}\n\n')
    out = tmp_path / "out.npy"
    main(["embed", "--device", "cpu", "--file", str(src), "--dimensions", "64", "-o", str(out)])
    vectors = np.load(out)
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_text_file_rows_follow_its_lines(tmp_path):
    """Every line of a text file is one row, a blank one too: row i of the output is line i."""
    import embzoo

    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    src.write_text("first\n\nthird\n")
    main(["embed", "--device", "cpu", "--file", str(src), "-o", str(out)])
    want = embzoo.load(device="cpu").encode(["first", "", "third"])
    np.testing.assert_allclose(np.load(out), want, atol=1e-6)


def test_embed_without_input_explains(capsys):
    with pytest.raises(SystemExit, match="give TEXT arguments or --file"):
        main(["embed"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "--model", "./no-such-model", "x"], "embzoo embed: .*no-such-model"),
        (["rerank", "--model", "./no-such-model", "--query", "q", "d"], "embzoo rerank: .*no-such-model"),
        (["embed", "--file", "no-such-file.txt"], "embzoo embed: cannot read --file no-such-file.txt"),
    ],
)
def test_a_missing_model_or_file_is_one_line_not_a_traceback(argv, message):
    with pytest.raises(SystemExit, match=message):
        main([*argv, "--device", "cpu"])


def test_list_shows_the_catalog(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert "BAAI/bge-m3" in out and "intfloat/multilingual-e5-large" in out


def test_embed_with_a_literal_prompt(capsys):
    from embzoo import load

    main(["embed", "--device", "cpu", "--prompt", "query: ", "hello"])
    row = json.loads(capsys.readouterr().out)
    expected = load(device="cpu").encode("hello", prompt="query: ")
    np.testing.assert_allclose(row["embedding"], expected, atol=1e-6)
    assert "Qwen/Qwen3-Embedding-0.6B" in (main(["list"]) or capsys.readouterr().out)
