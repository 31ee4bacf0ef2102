"""`longrope-search eval` end to end on the embedded model, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from longrope_search.cli import main
from longrope_search.defaults import EMBEDDED_MODEL
from longrope_search.rope import RopeGeometry, pi_lambdas


def test_eval_writes_tables_and_applies_factor_files(tmp_path: Path, capsys) -> None:
    from longrope_search.model import read_geometry

    g: RopeGeometry = read_geometry(EMBEDDED_MODEL)
    factor = tmp_path / "pi2.json"
    factor.write_text(json.dumps({"lambdas": pi_lambdas(g, 2.0).tolist()}))
    out = tmp_path / "out"
    rc = main(["eval", "--lengths", f"{g.original_length},{2 * g.original_length}", "--k", "2",
               "--methods", "none,pi", "--factors", str(factor), "--out", str(out),
               "--dtype", "float32"])
    assert rc == 0
    df = pd.read_parquet(out / "eval.parquet")
    assert len(df) == 6 and set(df.method) == {"none", "pi", "pi2"}
    assert pd.read_csv(out / "eval.csv").shape == df.shape
    at = df.set_index(["method", "length"]).ppl
    two_l = 2 * g.original_length
    assert at["pi2", two_l] == pytest.approx(at["pi", two_l], rel=1e-9)  # same λ, same ppl
    assert at["pi", g.original_length] == pytest.approx(at["none", g.original_length])
    meta = json.loads((out / "eval.json").read_text())
    assert meta["command"].startswith("longrope-search eval") and len(meta["rows"]) == 6
    printed = capsys.readouterr().out
    assert "pi2" in printed and f"{two_l}" in printed


def test_eval_at_a_fixed_ratio_applies_the_seeds_as_deployed(tmp_path: Path, capsys) -> None:
    """--fixed-ratio 4: PI-4× at L (not the unmodified model), the header says which."""
    from longrope_search.model import read_geometry

    L = read_geometry(EMBEDDED_MODEL).original_length
    out = tmp_path / "out"
    assert main(["eval", "--lengths", f"{L},{4 * L}", "--k", "2", "--methods", "none,pi",
                 "--fixed-ratio", "4", "--out", str(out), "--dtype", "float32"]) == 0
    at = pd.read_parquet(out / "eval.parquet").set_index(["method", "length"])
    assert at.ppl["pi", L] > 1.05 * at.ppl["none", L]  # PI-4× squeezes short prompts
    assert set(at.seeds_at) == {"fixed ratio"} and set(at.extension_ratio) == {4.0}
    assert "seeds configured for s = 4 at every length" in capsys.readouterr().out
    assert run_error(["eval", "--fixed-ratio", "0.5"], capsys).count("fixed-ratio") == 1


def run_error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "loading" not in err  # refused before any model was loaded
    return err


def test_missing_model(tmp_path: Path, capsys) -> None:
    err = run_error(["eval", "--model", str(tmp_path / "nope")], capsys)
    assert "error: model:" in err and "is not a folder" in err


def test_model_without_rope(tmp_path: Path, capsys) -> None:
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(
        tmp_path / "gpt2")
    err = run_error(["eval", "--model", str(tmp_path / "gpt2")], capsys)
    assert "model: model_type 'gpt2' has no rotary position embedding" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [("{oops", "not valid JSON"), (json.dumps({"lambdas": [1.0, 2.0]}), "rotary pairs")],
)
def test_bad_factor_file(tmp_path: Path, capsys, content: str, message: str) -> None:
    (tmp_path / "f.json").write_text(content)
    err = run_error(["eval", "--factors", str(tmp_path / "f.json")], capsys)
    assert message in err


@pytest.mark.parametrize(("flag", "value", "field"),
                         [("--lengths", "12x", "lengths"), ("--methods", "pi,magic", "methods")])
def test_bad_flags(capsys, flag: str, value: str, field: str) -> None:
    err = run_error(["eval", flag, value], capsys)
    assert f"error: {field}:" in err
