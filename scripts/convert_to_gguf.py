"""Write a Hugging Face Llama or Qwen2 model folder as GGUF (``longrope_search.llamacpp.convert``).

    python scripts/convert_to_gguf.py longrope_search/data/embedded -o embedded.gguf --dtype f32

For other architectures use llama.cpp's ``convert_hf_to_gguf.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longrope_search.defaults import model_location
from longrope_search.llamacpp.convert import DTYPES, convert_to_gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model folder, or embedded")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--dtype", choices=list(DTYPES), default="f32")
    args = ap.parse_args()
    print(convert_to_gguf(model_location(args.model), args.output, args.dtype))


if __name__ == "__main__":
    main()
