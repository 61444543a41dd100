r"""Input pipeline on a pod: what one host process delivers, and what it reads,
against what the 280M proxy's step consumes on v5p-64 and v5p-256.

    python bench/input_pipeline.py [--json_out FILE]

With no arguments it builds the real-text corpus of the mixture study
(`bench/real_text.py`: six domains, an 8k SentencePiece model), prepares
it packed at 1024 tokens (the proxy's sequence length) for the byte and the
SentencePiece vocabulary, and then, for 1, 2, 4 and 8 simulated hosts,
runs every host of the run as its own process, one after the other (each
has the machine's 2 cores to itself, as a pod host has its own CPUs): a
`BatchLoader` for its slice of the proxy's global batch (512 x 1024,
stratified over the domains, as Step 2 draws), timed over `--steps` steps
after a warm-up. Per host it reports tokens/s delivered and the bytes it
read per step (the process's read-syscall bytes, /proc/self/io rchar; and
the record bytes). The consumption is the proxy step's global batch over
its roofline step time from `compile_check` on each slice (`--roofline`
reuses figures of an earlier --json_out), divided over the slice's hosts
(4 chips each); headroom = delivered / consumed per host.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _emit import emit  # noqa: E402

SLICES = ("v5p-64", "v5p-256")
CHIPS_PER_HOST = 4


def roofline(slice_name: str) -> dict:
  """The 280M proxy step on a slice, from `python -m doremi_jax.compile_check`."""
  cmd = [sys.executable, "-m", "doremi_jax.compile_check", "--gin_file",
         "gin/pod/doremi_280m_8b.gin", "--gin_file", f"gin/mesh/{slice_name}.gin",
         "--stage", "proxy"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3000,
                       env=dict(os.environ, XLA_FLAGS=""))
  if out.returncode:
    raise SystemExit(f"compile_check failed on {slice_name}:\n{out.stderr[-3000:]}")
  head = re.search(r"on \S+ \((\d+) x .*?, (\d+) tokens/step", out.stdout)
  step = re.search(r"roofline lower bound\): ([\d.]+) ms", out.stdout)
  chips, tokens, ms = int(head.group(1)), int(head.group(2)), float(step.group(1))
  hosts = max(1, chips // CHIPS_PER_HOST)
  return {"chips": chips, "hosts": hosts, "tokens_per_step": tokens, "step_ms": ms,
          "tokens_per_s_per_host": tokens / (ms / 1e3) / hosts}


def _rchar() -> int:
  with open("/proc/self/io") as f:
    return int(re.search(r"rchar: (\d+)", f.read()).group(1))


def host(args) -> dict:
  """One simulated host: its loader's throughput and reads."""
  import numpy as np
  from doremi_jax.data import local_prepare, packing
  from doremi_jax.data.corpus import Corpus
  from doremi_jax.data.loader import BatchLoader, StratifiedAssignment
  with open(local_prepare.manifest_path(args.data_dir, "realtext")) as f:
    entries = json.load(f)["domains"]
  openers, names = [], []
  for e in entries:
    d = local_prepare.domain_dir(args.data_dir, e)
    with open(os.path.join(d, "packed", f"{args.tag}_L{args.seq_len}", packing.META)) as f:
      identity = json.load(f)["vocabulary"]
    openers.append(lambda split, n, e=e, d=d, v=identity: packing.open_source(
        e["domain"], d, v, split, n))
    names.append(e["domain"])
  corpus = Corpus(name="realtext", domains=tuple(names), task_names=tuple(names),
                  vocabulary=None, train_tokens=(1,) * len(names), packed=tuple(openers))
  loader = BatchLoader(corpus, StratifiedAssignment(len(names), 0), args.batch, args.seq_len,
                       seed=0, process_index=args.index, process_count=args.hosts, prefetch=2)
  for _ in range(args.warmup):
    loader.next()
  r0, b0, t0 = _rchar(), loader.bytes_read, time.perf_counter()
  real = 0
  for _ in range(args.steps):
    batch, _ = loader.next()
    real += int(np.count_nonzero(batch["segment_ids"]))
  seconds = time.perf_counter() - t0
  r1, b1 = _rchar(), loader.bytes_read
  loader.close()
  rows = args.batch // args.hosts
  return {"tokens_per_s": rows * args.seq_len * args.steps / seconds,
          "real_tokens_per_s": real / seconds,
          # bytes per step; the loader reads ahead, so both counters ran a
          # few steps further than the timed ones: per-step means over them
          "rchar_per_step": (r1 - r0) / args.steps, "record_bytes_per_step": (b1 - b0) / args.steps}


def build(data_dir: str, seq_len: int, spm_vocab: int):
  if not os.path.exists(os.path.join(data_dir, "doremi_corpora", "realtext.json")) or not \
      os.path.exists(os.path.join(data_dir, f"spm_{spm_vocab}.model")):
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "real_text.py"),
                        "--out", data_dir, "--spm_vocab", str(spm_vocab),
                        "--seq_len", str(seq_len)], cwd=REPO)
    if r.returncode:
      raise SystemExit("building the real-text corpus failed")


def tags(data_dir: str, seq_len: int, spm_vocab: int) -> dict:
  """{vocabulary name: packed directory tag} of the prepared corpus."""
  from doremi_jax.data import local_prepare, packing
  with open(local_prepare.manifest_path(data_dir, "realtext")) as f:
    first = json.load(f)["domains"][0]
  found = {}
  for vocab in packing.available(local_prepare.domain_dir(data_dir, first)):
    v, n = vocab
    if n == seq_len:
      found["byte" if v["kind"] == "byte" else f"spm{spm_vocab // 1000}k"] = \
          packing.vocabulary_tag(v)
  return found


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", default="data/input_bench")
  p.add_argument("--seq_len", type=int, default=1024)
  p.add_argument("--batch", type=int, default=512, help="global batch (the 280M proxy's)")
  p.add_argument("--spm_vocab", type=int, default=8000)
  p.add_argument("--hosts", default="1,2,4,8,32",
                 help="simulated host counts (32: a v5p-256 host's share of the batch)")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--roofline", default=None, help="reuse the roofline of this earlier JSON")
  p.add_argument("--json_out", default=None)
  p.add_argument("--index", type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument("--tag", default=None, help=argparse.SUPPRESS)
  p.add_argument("--host_count", type=int, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.index is not None:   # a simulated host
    args.hosts = args.host_count
    print(json.dumps(host(args)))
    return 0
  data_dir = os.path.abspath(args.data_dir)
  build(data_dir, args.seq_len, args.spm_vocab)
  if args.roofline:
    with open(args.roofline) as f:
      roof = json.load(f)["roofline"]
  else:
    roof = {s: roofline(s) for s in SLICES}
  counts = [int(h) for h in args.hosts.split(",")]
  results = []
  for vocab, tag in sorted(tags(data_dir, args.seq_len, args.spm_vocab).items()):
    base = None
    for n in counts:
      if args.batch % n:
        raise SystemExit(f"--batch {args.batch} is not divisible by {n} hosts")
      per = []
      for i in range(n):
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--data_dir", data_dir, "--seq_len",
             str(args.seq_len), "--batch", str(args.batch), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--index", str(i), "--tag", tag,
             "--host_count", str(n)], cwd=REPO, capture_output=True, text=True,
            env=dict(os.environ, JAX_PLATFORMS="cpu"))
        if out.returncode:
          raise SystemExit(out.stderr[-3000:])
        per.append(json.loads(out.stdout.strip().splitlines()[-1]))
      mean = lambda k: sum(x[k] for x in per) / len(per)
      row = {"vocabulary": vocab, "hosts": n, "tokens_per_s_per_host": mean("tokens_per_s"),
             "real_tokens_per_s_per_host": mean("real_tokens_per_s"),
             "slowest_host_tokens_per_s": min(x["tokens_per_s"] for x in per),
             "bytes_read_per_host": mean("rchar_per_step"),
             "record_bytes_per_host": mean("record_bytes_per_step")}
      base = base or row
      row["bytes_read_vs_1_over_hosts"] = row["bytes_read_per_host"] * n / \
          base["bytes_read_per_host"]
      for s in SLICES:
        row[f"headroom_{s.replace('-', '')}"] = (row["slowest_host_tokens_per_s"] /
                                                 roof[s]["tokens_per_s_per_host"])
      results.append(row)
      print(f"[input_pipeline] {vocab} {n} hosts: {row['tokens_per_s_per_host'] / 1e6:.2f}M "
            f"tokens/s per host, {row['bytes_read_per_host'] / 1e6:.2f} MB read per host "
            "per step", flush=True)
  result = {"seq_len": args.seq_len, "global_batch": args.batch, "steps": args.steps,
            "roofline": roof, "results": results,
            "note": "bytes are per host per step; headroom uses the slowest host"}
  rows = [[r["vocabulary"], r["hosts"], f"{r['tokens_per_s_per_host'] / 1e6:.2f}M",
           f"{r['bytes_read_per_host'] / 1e6:.2f} MB", f"{r['bytes_read_vs_1_over_hosts']:.2f}",
           f"{r['headroom_v5p64']:.1f}x", f"{r['headroom_v5p256']:.1f}x"] for r in results]
  emit(result, ["vocabulary", "hosts", "tokens/s per host", "read per host per step",
                "read x hosts / read at 1 host", "headroom v5p-64", "headroom v5p-256"],
       rows, args.json_out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
