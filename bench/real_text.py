r"""Builds a six-domain real-text corpus from files every Debian/Ubuntu
machine of this kind carries, and prepares it through the bring-your-own
path (`doremi_jax.prepare`), optionally with a SentencePiece model
(`doremi_jax.tokenizer`).

    python bench/real_text.py --out data/realtext [--spm_vocab 8000]

Domains (each capped at --max_bytes, files sampled in a fixed order so two
machines with the same files build the same corpus):

  python    the Python standard library's sources (*.py)
  man_en    English man pages (troff source)
  man_intl  man pages in other languages (de, fr, es, ... troff source)
  changelog Debian package changelogs (/usr/share/doc/*/changelog*.gz)
  license   Debian copyright files (/usr/share/doc/*/copyright)
  hex       random hexadecimal strings (nothing to learn past log 16 per
            character: the corpus's noise domain)

Writes OUT/raw/<domain>.jsonl.gz, prepares OUT (the TFDS data dir, corpus
name `realtext`), packed at --seq_len for the byte vocabulary and, with
--spm_vocab, OUT/spm_<N>.model and the packing for it. Then train with
`gin/study_realtext.gin`. Refuses (exit 2) when a domain finds no files.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import random
import subprocess
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_DOC = 32_768        # default: characters kept of one document (long files are cut)


def _python_sources():
  root = sysconfig.get_paths()["stdlib"]
  return sorted(p for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
                if "site-packages" not in p)


def _man(english: bool):
  paths = sorted(glob.glob("/usr/share/man/**/*.gz", recursive=True))
  def is_english(p):
    return os.path.basename(os.path.dirname(os.path.dirname(p))) == "man"
  return [p for p in paths if is_english(p) == english]


DOMAINS = {
    "python": _python_sources,
    "man_en": lambda: _man(True),
    "man_intl": lambda: _man(False),
    "changelog": lambda: sorted(glob.glob("/usr/share/doc/*/changelog*.gz")),
    "license": lambda: sorted(glob.glob("/usr/share/doc/*/copyright")),
}


def _read(path: str, max_doc: int) -> str:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    return f.read(4 * max_doc).decode("utf-8", errors="replace")[:max_doc]


def collect(paths: list, max_bytes: int, seed: int, max_doc: int = MAX_DOC) -> list:
  """Documents (each cut to `max_doc` characters) from `paths` in a seeded
  order until `max_bytes` of UTF-8."""
  order = list(paths)
  random.Random(seed).shuffle(order)
  docs, size = [], 0
  for p in order:
    try:
      text = _read(p, max_doc)
    except (OSError, EOFError):
      continue
    if not text.strip():
      continue
    docs.append(text)
    size += len(text.encode("utf-8"))
    if size >= max_bytes:
      break
  return docs


def hex_docs(max_bytes: int, seed: int, max_doc: int = MAX_DOC) -> list:
  rnd = random.Random(seed)
  docs, size = [], 0
  while size < max_bytes:
    n = rnd.randint(min(200, max_doc), min(2000, max_doc))
    docs.append("".join(rnd.choice("0123456789abcdef") for _ in range(n)))
    size += n
  return docs


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="data/realtext", help="output directory (the TFDS data dir)")
  p.add_argument("--max_bytes", type=int, default=2_000_000, help="cap per domain (UTF-8 bytes)")
  p.add_argument("--hex_bytes", type=int, default=300_000, help="size of the hex domain")
  p.add_argument("--spm_vocab", type=int, default=0,
                 help="also train a SentencePiece model of this size (0: byte vocabulary only)")
  p.add_argument("--max_doc_chars", type=int, default=MAX_DOC,
                 help="characters kept of one document")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--validation_fraction", type=float, default=0.05,
                 help="share of documents held out (halved by hash into tune and test)")
  p.add_argument("--seq_len", type=int, default=128,
                 help="sequence length the domains are packed for (the runs' seq_len)")
  args = p.parse_args(argv)
  if min(args.max_bytes, args.hex_bytes, args.max_doc_chars) <= 0 or args.spm_vocab < 0:
    print("error: --max_bytes, --hex_bytes and --max_doc_chars must be > 0 and --spm_vocab "
          ">= 0.", file=sys.stderr)
    return 2
  raw = os.path.join(args.out, "raw")
  os.makedirs(raw, exist_ok=True)
  flags = []
  sizes = {}
  for name, find in list(DOMAINS.items()) + [("hex", None)]:
    docs = (hex_docs(args.hex_bytes, args.seed, args.max_doc_chars) if find is None
            else collect(find(), args.max_bytes, args.seed, args.max_doc_chars))
    if len(docs) < 20:
      print(f"error: domain {name!r} has {len(docs)} documents (needs 20 for its validation "
            "split): raise --max_bytes (or --hex_bytes) or lower --max_doc_chars; for a "
            "system domain, this machine may lack the files (install the packages' "
            "documentation).", file=sys.stderr)
      return 2
    path = os.path.join(raw, f"{name}.jsonl.gz")
    with gzip.open(path, "wt", encoding="utf-8") as f:
      for d in docs:
        f.write(json.dumps({"text": d}) + "\n")
    sizes[name] = (len(docs), sum(len(d.encode("utf-8")) for d in docs))
    flags.append(f"--domain={name}={path}")
  for name, (n, b) in sizes.items():
    print(f"{name:<10}{n:>7} documents{b:>11} bytes")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "doremi_jax.prepare", "--corpus=realtext",
         f"--data_dir={args.out}", f"--seq_len={args.seq_len}",
         f"--validation_fraction={args.validation_fraction}", *flags]
  if subprocess.run(cmd, cwd=REPO, env=env).returncode:
    return 2
  if args.spm_vocab:
    model = os.path.join(args.out, f"spm_{args.spm_vocab}")
    cmd = [sys.executable, "-m", "doremi_jax.tokenizer", "--corpus=realtext",
           f"--data_dir={args.out}", f"--vocab_size={args.spm_vocab}", f"--output={model}"]
    if subprocess.run(cmd, cwd=REPO, env=env).returncode:
      return 2
    cmd = [sys.executable, "-m", "doremi_jax.prepare", "--corpus=realtext",
           f"--data_dir={args.out}", f"--seq_len={args.seq_len}",
           f"--vocabulary={model}.model", f"--validation_fraction={args.validation_fraction}",
           *flags]
    if subprocess.run(cmd, cwd=REPO, env=env).returncode:
      return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
