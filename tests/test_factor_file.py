"""Factor JSON files: the accepted shapes and a clear error for each malformed one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longrope_search.errors import ConfigError
from longrope_search.factor_file import load_factor_file
from longrope_search.rope import RopeGeometry, su_attention_factor

G = RopeGeometry(head_dim=16, rotary_dim=16, base=1e4, original_length=128)
LAM = [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0]


def write(tmp_path: Path, obj, name: str = "f.json") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_own_record(tmp_path: Path) -> None:
    cand = load_factor_file(write(tmp_path, {"lambdas": LAM, "n_hat": 4,
                                             "attention_factor": 1.2}), G)
    np.testing.assert_array_equal(cand.lambdas, LAM)
    assert (cand.n_hat, cand.attention_factor, cand.name) == (4, 1.2, "f")


@pytest.mark.parametrize("wrap", ["rope_parameters", "rope_scaling", None])
def test_transformers_longrope_block(tmp_path: Path, wrap: str | None) -> None:
    block = {"rope_type": "longrope", "long_factor": LAM, "short_factor": [1.0] * 8,
             "original_max_position_embeddings": 128, "factor": 8.0}
    data = {wrap: block, "max_position_embeddings": 1024} if wrap else block
    cand = load_factor_file(write(tmp_path, data), G)
    np.testing.assert_array_equal(cand.lambdas, LAM)
    assert cand.attention_factor == pytest.approx(su_attention_factor(8.0, 128))
    block["attention_factor"] = 1.05
    assert load_factor_file(write(tmp_path, data), G).attention_factor == 1.05


def test_factor_defaults_to_max_over_original(tmp_path: Path) -> None:
    data = {"max_position_embeddings": 512, "rope_scaling": {
        "type": "longrope", "long_factor": LAM, "original_max_position_embeddings": 128}}
    cand = load_factor_file(write(tmp_path, data), G)
    assert cand.attention_factor == pytest.approx(su_attention_factor(4.0, 128))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"factors \(f.json\): not valid JSON"),
        ([1, 2], "top level must be a JSON object"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 4}}, "has neither 'lambdas'"),
        ({"lambdas": LAM[:5]}, "lambdas: has 5 values but the model has 8 rotary pairs"),
        ('{"lambdas": [1, 1, 1, NaN, 2, 2, 2, 2]}', r"λ\[3\] is nan"),
        ({"lambdas": ["a"] * 8}, "lambdas: must be a list of numbers"),
        ({"lambdas": LAM, "n_hat": "four"}, "n_hat: must be an integer"),
        ({"long_factor": LAM, "attention_factor": "big"}, "attention_factor"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path: Path, content, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_factor_file(write(tmp_path, content), G)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"factors: .* does not exist"):
        load_factor_file(tmp_path / "nope.json", G)
