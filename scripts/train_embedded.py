"""Train the embedded default model: a small Llama on the CPython standard library.

The model exists so that longrope-search runs out of the box on a machine with no network and
no GPU. It is a real ``LlamaForCausalLM`` trained at a short context (L = 128) so that the
long-context failure LongRoPE fixes shows up at 2L…16L within seconds on a CPU.

Everything is derived from text that ships with every CPython: the ``.py`` sources of the
standard library (tests and site-packages excluded). With ``--recipe qwen2-c`` the same script
trains the project's second model, of another architecture and on other text: a
``Qwen2ForCausalLM`` (grouped-query attention, 4 query heads sharing 2 key/value heads, biases
on q, k and v, θ = 5·10⁴, L = 256) on the C headers under ``/usr/include``. Files are split
deterministically by a hash of their path into training text and two held-out evaluation sets:

* ``documents/search``  — fitness documents for the search (never trained on);
* ``documents/heldout`` — documents used only to report results (never trained on, never fitness).

Run (about 12 minutes on 2 CPU cores)::

    python scripts/train_embedded.py --out longrope_search/data/embedded
    python scripts/train_embedded.py --recipe qwen2-c --out models/qwen2-c   # the second model

The output folder is what ``from_pretrained`` loads: ``config.json``, ``model.safetensors``,
``tokenizer.json`` and ``tokenizer_config.json``, plus ``documents/`` and ``training.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

EOS = "<|endoftext|>"
SKIP_DIRS = {"site-packages", "__pycache__", "test", "tests", "idle_test"}


@dataclass(frozen=True)
class Recipe:
    """What a model is trained on and how it is shaped; command-line flags override."""

    corpus: Path  # every file below it with ``suffix`` (SKIP_DIRS excluded)
    suffix: str
    architecture: str  # "llama" or "qwen2"
    context: int  # trained context L
    kv_heads: int  # key/value heads (grouped-query attention when fewer than --heads)
    rope_theta: float
    batch_size: int  # sequences per step: 4,096 tokens at either context
    source: str  # how training.json names the text
    skip: frozenset[str] = frozenset()  # more folders to leave out


RECIPES = {
    "embedded": Recipe(Path(sysconfig.get_paths()["stdlib"]), ".py", "llama", 128, 4, 1e4, 32,
                       f"CPython {'.'.join(map(str, sys.version_info[:3]))} standard library"),
    # C, not C++: the large C++ trees (node, LLVM, libstdc++, ICU) stay out
    "qwen2-c": Recipe(Path("/usr/include"), ".h", "qwen2", 256, 2, 5e4, 16,
                      "C headers under /usr/include",
                      frozenset({"node", "llvm-14", "llvm-c-14", "c++", "unicode"})),
}


def sources(root: Path, suffix: str, skip: frozenset[str] = frozenset()) -> list[Path]:
    """All ``suffix`` files below ``root``, tests and ``skip`` excluded, in a stable order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS | skip)
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(suffix)]
    return files


def model_config(recipe: Recipe, args: argparse.Namespace, tokenizer) -> PretrainedConfig:
    """The architecture's config: tied embeddings, RoPE at θ, trained context L."""
    common = dict(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size,
        intermediate_size=3 * args.hidden_size, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=recipe.kv_heads,
        max_position_embeddings=args.context,
        rope_parameters={"rope_type": "default", "rope_theta": recipe.rope_theta},
        tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if recipe.architecture == "qwen2":  # biases on q, k, v are Qwen2's own
        return Qwen2Config(**common, use_sliding_window=False)
    return LlamaConfig(**common)


def split_of(rel_path: str, size: int, eval_min_bytes: int) -> str:
    """Deterministic split: about 1 in 6 large files is held out, alternating search/heldout."""
    h = int(hashlib.sha1(rel_path.encode()).hexdigest(), 16)
    if size >= eval_min_bytes and h % 6 == 0:
        return "search" if (h // 6) % 2 == 0 else "heldout"
    return "train"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("longrope_search/data/embedded"))
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="embedded")
    ap.add_argument("--context", type=int, help="trained context L (default: the recipe's)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch-size", type=int, help="default: the recipe's")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--max-minutes", type=float, default=18.0)
    ap.add_argument("--eval-min-bytes", type=int, default=16_000)
    ap.add_argument("--docs-per-split", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    recipe = RECIPES[args.recipe]
    args.context = args.context or recipe.context
    args.batch_size = args.batch_size or recipe.batch_size

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    root = recipe.corpus
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "search": [], "heldout": []}
    for path in sources(root, recipe.suffix, recipe.skip):
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(root).as_posix()
        splits[split_of(rel, len(text.encode()), args.eval_min_bytes)].append((rel, text))
    for name in ("search", "heldout"):
        splits[name] = splits[name][: args.docs_per_split]
    print({k: len(v) for k, v in splits.items()})

    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="embedded-", dir=args.out.parent))
    tokenizer = train_tokenizer([t for _, t in splits["train"]], args.vocab_size)
    tokenizer.save_pretrained(work)
    # Users tokenize through AutoTokenizer: train on exactly the ids that path produces.
    tokenizer = AutoTokenizer.from_pretrained(work)
    sample = splits["train"][0][1][:2000]
    assert tokenizer(sample)["input_ids"] == tokenizer.backend_tokenizer.encode(sample).ids

    ids: list[int] = []
    for _, text in splits["train"]:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    data = torch.tensor(ids, dtype=torch.long)
    print(f"training tokens available: {len(data):,}")

    model = AutoModelForCausalLM.from_config(model_config(recipe, args, tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = 100
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    log = []
    step = 0
    model.train()
    while step < args.max_steps and (time.time() - t0) < 60 * args.max_minutes:
        lr = args.lr * min(1.0, (step + 1) / warmup)
        lr *= 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.max_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - args.context - 1, (args.batch_size,), generator=gen)
        batch = torch.stack([data[s : s + args.context] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            elapsed = time.time() - t0
            log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(elapsed, 1)})
            print(log[-1], flush=True)

    model.eval()
    model.save_pretrained(work, safe_serialization=True)
    for name in ("search", "heldout"):
        folder = work / "documents" / name
        folder.mkdir(parents=True)
        for rel, text in splits[name]:
            (folder / (rel.replace("/", "__").removesuffix(recipe.suffix) + ".txt")
             ).write_text(text)
    meta = {
        "source": recipe.source,
        "architecture": recipe.architecture,
        "trained_context": args.context,
        "parameters": n_params,
        "steps": step,
        "tokens_seen": step * args.batch_size * args.context,
        "training_tokens_available": len(data),
        "train_files": len(splits["train"]),
        "seconds": round(time.time() - t0, 1),
        "final_loss": log[-1]["loss"] if log else None,
        "args": {k: str(v) for k, v in vars(args).items()},
        "log": log,
    }
    (work / "training.json").write_text(json.dumps(meta, indent=1))
    if args.out.exists():
        shutil.rmtree(args.out)
    work.rename(args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
