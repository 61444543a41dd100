r"""Export a trained run's model in the form another stack loads.

  python -m doremi_jax.export_model RUN_DIR --format hf OUT_DIR \
      [--step N] [--overwrite]

RUN_DIR is a stage's run directory or a pipeline's (its DoReMi main
model); the newest checkpoint is exported unless --step. FORMAT:

  hf   a Hugging Face `transformers` LlamaForCausalLM checkpoint
       (doremi_jax/hf/llama.py has the exact weight mapping):
         config.json, generation_config.json, model.safetensors (float32,
         written with NumPy: exporting needs no torch), README.md (where it
         came from, how to feed it), and for a SentencePiece run
         tokenizer.json + tokenizer_config.json (`AutoTokenizer` gives our
         ids, 0 prepended; doremi_jax/hf/tokenizer.py) with the model file
         itself as sentencepiece.model. The byte and synthetic vocabularies
         have no Hugging Face tokenizer: feed ids (README.md says how).

Load it with

  from transformers import AutoModelForCausalLM, AutoTokenizer
  model = AutoModelForCausalLM.from_pretrained(OUT_DIR)
  tokenizer = AutoTokenizer.from_pretrained(OUT_DIR)   # SentencePiece runs

Every document the model trained on started with id 0 at position 0, so a
prompt's ids start with 0 (the tokenizer prepends it; config.json's
bos_token_id is 0). OUT_DIR must be new or empty; --overwrite replaces the
files an export writes there and leaves any others alone.
"""

from __future__ import annotations

import os

from absl import flags, logging

from doremi_jax import files
from doremi_jax.cli import init_backends_quietly, run_tool
from doremi_jax.config import ConfigError
from doremi_jax.data import vocab as vocab_lib
from doremi_jax.hf import llama
from doremi_jax.hf import tokenizer as hf_tokenizer
from doremi_jax.tasks import trained as trained_lib

FORMATS = ("hf",)
# The id every training document's input starts with (`loss.model_inputs`).
BOS_ID = 0
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
SENTENCEPIECE = "sentencepiece.model"
# Every file an export may write (what --overwrite replaces).
EXPORT_FILES = (CONFIG, GENERATION_CONFIG, WEIGHTS, CARD, hf_tokenizer.TOKENIZER_JSON,
                hf_tokenizer.TOKENIZER_CONFIG, SENTENCEPIECE)

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so importing this module for its
  functions leaves the other tools' flags alone)."""
  flags.DEFINE_enum("format", "hf", FORMATS, "What to export as.")
  flags.DEFINE_integer("step", None, "The checkpoint to export (default: the newest).",
                       lower_bound=0)
  flags.DEFINE_bool("overwrite", False, "Replace an earlier export's files in OUT_DIR.")


def check_out_dir(out_dir: str, overwrite: bool) -> None:
  """ConfigError unless OUT_DIR is new, empty, or (`overwrite`) a directory."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ConfigError(f"OUT_DIR {out_dir!r} is a file; give a directory (new or empty).")
  if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
    raise ConfigError(f"OUT_DIR {out_dir!r} is not empty; give a new or empty directory, "
                      "or pass --overwrite to replace an earlier export's files there.")


def tokenizer_files(vocabulary, seq_len: int) -> tuple:
  """({file name: text or bytes}, a sentence on the tokenizer) of the
  vocabulary's Hugging Face tokenizer, if it has one."""
  name = type(vocabulary).__name__
  if not isinstance(vocabulary, vocab_lib.SentencePieceVocabulary):
    return {}, (f"no Hugging Face tokenizer: the run's vocabulary ({name}) has none; feed "
                "ids, 0 first.")
  model_bytes = files.path(vocabulary.sentencepiece_model_file).read_bytes()
  proto = hf_tokenizer.model_proto(model_bytes)
  why = hf_tokenizer.unsupported(proto)
  if why:
    return {SENTENCEPIECE: model_bytes}, (
        f"no Hugging Face tokenizer: the SentencePiece model {why}; it is copied as "
        f"{SENTENCEPIECE} (encode with sentencepiece and prepend 0).")
  return {hf_tokenizer.TOKENIZER_JSON: hf_tokenizer.tokenizer_json(proto),
          hf_tokenizer.TOKENIZER_CONFIG: hf_tokenizer.tokenizer_config(
              proto, vocabulary.eos_id, seq_len),
          SENTENCEPIECE: model_bytes}, (
              f"tokenizer.json: AutoTokenizer.from_pretrained (or PreTrainedTokenizerFast; "
              f"not LlamaTokenizer, which is BPE-only) gives the SentencePiece model's ids, "
              f"0 prepended ({SENTENCEPIECE} is the model itself).")


def feeding(vocabulary) -> str:
  """README.md's paragraph on how to turn text into the model's ids."""
  first = ("Every training document started with id 0 at position 0, so a prompt's ids "
           "start with 0 (`bos_token_id`). ")
  if isinstance(vocabulary, vocab_lib.SentencePieceVocabulary):
    return first + ("`AutoTokenizer.from_pretrained(this directory)` prepends it: "
                    "`tokenizer(text).input_ids` is `[0] + SentencePiece ids`.")
  if isinstance(vocabulary, vocab_lib.ByteVocabulary):
    return first + ("This run read UTF-8 bytes, id = byte + 3 (0 padding/BOS, 1 EOS, 2 "
                    "UNK), which no Hugging Face tokenizer gives: feed ids,\n\n"
                    "    ids = [0] + [b + 3 for b in text.encode('utf-8')]\n")
  return first + (f"This run's vocabulary ({type(vocabulary).__name__}) has no Hugging Face "
                  "tokenizer: feed ids,\n\n    from doremi_jax.data import vocab\n"
                  f"    ids = [0] + vocab.{type(vocabulary).__name__}().encode(text)\n")


def card(t: trained_lib.Trained, n_params: int, tokenizer_note: str) -> str:
  """README.md: what the export is and how to use it."""
  cfg, v = t.model_cfg, t.vocabulary
  return (
      f"# doremi_jax model: {os.path.basename(os.path.normpath(t.run_dir))}, step {t.step}\n\n"
      f"Exported by `python -m doremi_jax.export_model` from `{t.run_dir}` (step {t.step}) "
      f"as a Hugging Face `{llama.ARCHITECTURE}` ({n_params:,} parameters, float32).\n\n"
      f"- {cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads of "
      f"{cfg.head_dim}, MLP {cfg.mlp_dim}, rotary base {cfg.rope_theta:g}, "
      f"{'tied' if cfg.tied_embeddings else 'untied'} embeddings\n"
      f"- vocabulary: {type(v).__name__}, {v.vocab_size} ids (the embedding has "
      f"{cfg.vocab_size} rows); EOS {v.eos_id}, padding 0\n"
      f"- trained on sequences of {t.seq_len} tokens\n\n"
      "## Loading\n\n    from transformers import AutoModelForCausalLM\n"
      "    model = AutoModelForCausalLM.from_pretrained(THIS_DIR)\n\n"
      f"## Feeding it\n\n{feeding(v)}\n\n"
      "config.json has no `pad_token_id`: our padding id is 0, the BOS, which "
      "`generate` would mask out of a prompt; generation_config.json pads finished "
      "sequences with EOS. When batching prompts of different lengths, pad on the left "
      "and pass the `attention_mask`.\n\n"
      f"## Tokenizer\n\n{tokenizer_note}\n")


def _write(path: str, content) -> None:
  """A JSON (dict), text (str) or binary (bytes) file, through a rename."""
  if isinstance(content, dict):
    files.write_json(path, content)
  elif isinstance(content, str):
    files.write_text(path, content)
  else:
    files.path(path + ".tmp").write_bytes(content)
    os.replace(path + ".tmp", path)


def export_hf(t: trained_lib.Trained, out_dir: str) -> tuple:
  """Writes `t` as a Hugging Face checkpoint in `out_dir` (the module
  docstring's files; an earlier export's are replaced). Returns (the file
  names written, the tokenizer sentence)."""
  v = t.vocabulary
  llama.check_exportable(t.model_cfg)
  named = llama.tensors(t.model_cfg, t.params)
  tok_files, note = tokenizer_files(v, t.seq_len)
  out = {CONFIG: llama.config(t.model_cfg, bos_id=BOS_ID, eos_id=v.eos_id),
         GENERATION_CONFIG: llama.generation_config(bos_id=BOS_ID, eos_id=v.eos_id),
         **tok_files, CARD: card(t, llama.num_params(named), note)}
  os.makedirs(out_dir, exist_ok=True)
  for name in EXPORT_FILES:
    if os.path.exists(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  llama.write_safetensors(os.path.join(out_dir, WEIGHTS), named)
  for name, content in out.items():
    _write(os.path.join(out_dir, name), content)
  return [WEIGHTS, *out], note


def main(argv):
  if len(argv) != 3:
    raise ConfigError("give RUN_DIR and OUT_DIR: python -m doremi_jax.export_model RUN_DIR "
                      f"--format {'|'.join(FORMATS)} OUT_DIR [--step N].")
  run_dir, out_dir = argv[1:]
  if not os.path.exists(run_dir):
    raise ConfigError(f"RUN_DIR {run_dir!r} does not exist; give a stage's or a pipeline's "
                      "run directory.")
  trained_lib.run_directory(run_dir)       # ConfigError when it is not a run
  check_out_dir(out_dir, FLAGS.overwrite)
  init_backends_quietly()
  logging.set_verbosity(logging.ERROR)    # orbax's note that it reads the run read-only
  t = trained_lib.load(run_dir, FLAGS.step)
  written, note = export_hf(t, out_dir)
  print(f"[export_model] hf: {out_dir} ({llama.ARCHITECTURE} of {t.run_dir}, step {t.step}): "
        f"{', '.join(written)}")
  if hf_tokenizer.TOKENIZER_JSON not in written:
    note = f"{note.rstrip('.')}; {os.path.join(out_dir, CARD)} says how."
  print(f"[export_model] {note}")


if __name__ == "__main__":
  define_flags()
  run_tool(main)
