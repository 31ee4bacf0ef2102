"""Real long documents from the Python installation itself, for models that need more text than
the embedded documents (SmolLM2's trained context is 8,192 tokens): nothing is downloaded.

- ``prose-{search,heldout}.jsonl``: the Python reference manual's topics (``pydoc_data.topics``,
  English prose with code examples), packed in name order into documents of at least
  ``--prose-chars`` characters (80,000 ≈ 19k SmolLM2 tokens); the last two are held out.
- ``code-{search,heldout}.jsonl``: one document per standard-library package, its ``.py`` files
  in path order, for packages of at least ``--code-chars`` characters (300,000 ≈ 75k tokens);
  every fourth is held out.

    python scripts/python_documents.py --out data/python-docs

The documents depend on the Python version (results/ name it).
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from longrope_search.io import atomic_write


def prose(min_chars: int) -> Iterator[dict]:
    from pydoc_data.topics import topics

    text, names = "", []
    for name in sorted(topics):
        text += topics[name].strip() + "\n\n"
        names.append(name)
        if len(text) >= min_chars:
            yield {"text": text, "source": f"pydoc topics {names[0]}…{names[-1]}"}
            text, names = "", []


def code(min_chars: int) -> Iterator[dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in sorted(p for p in stdlib.iterdir() if (p / "__init__.py").is_file()):
        files = sorted(f for f in package.rglob("*.py") if "test" not in f.parts)
        text = "".join(f"# {f.relative_to(stdlib)}\n{f.read_text(errors='replace')}\n"
                       for f in files)
        if len(text) >= min_chars:
            yield {"text": text, "source": f"Python {sys.version.split()[0]} {package.name}"}


def write(path: Path, docs: list[dict]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(d) + "\n" for d in docs)))
    print(f"{path}: {len(docs)} documents, {sum(len(d['text']) for d in docs):,} characters")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/python-docs"))
    ap.add_argument("--prose-chars", type=int, default=80_000)
    ap.add_argument("--code-chars", type=int, default=300_000)
    args = ap.parse_args()
    texts = list(prose(args.prose_chars))
    write(args.out / "prose-search.jsonl", texts[:-2])
    write(args.out / "prose-heldout.jsonl", texts[-2:])
    texts = list(code(args.code_chars))
    write(args.out / "code-search.jsonl", [d for i, d in enumerate(texts) if i % 4 != 3])
    write(args.out / "code-heldout.jsonl", [d for i, d in enumerate(texts) if i % 4 == 3])


if __name__ == "__main__":
    main()
