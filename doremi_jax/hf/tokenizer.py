"""A SentencePiece model as a Hugging Face tokenizer: tokenizer.json (the
`tokenizers` library's format, written here as JSON, so exporting needs
neither `tokenizers` nor `transformers`) and tokenizer_config.json, which
`transformers.AutoTokenizer.from_pretrained(OUT_DIR)` loads as a fast
tokenizer giving SentencePiece's ids with id 0 prepended (the BOS every
training document starts with; see `loss.model_inputs`).

tokenizer.json follows the SentencePiece model's own settings:

  normalizer      the model's precompiled character map (nmt_nfkc), then
                  (`remove_extra_whitespaces`) leading and trailing spaces
                  dropped and runs of spaces made one, (`escape_whitespaces`)
                  spaces written U+2581, (`add_dummy_prefix`) U+2581
                  prepended to non-empty text
  model           Unigram over the model's pieces and scores, with byte
                  fallback as trained; the pieces SentencePiece never
                  matches in text (control, unknown, byte, unused; score 0
                  in the model) get the lowest normal score, so the
                  unknown-piece penalty (lowest score - 10) is
                  SentencePiece's too
  added_tokens    the control and unknown pieces (<pad>, </s>, <unk>)
  post_processor  id 0's piece prepended; a pair is `0 A B`
  decoder         U+2581 read as a space, byte pieces as bytes, the dummy
                  prefix's space dropped

Load it with `AutoTokenizer` or `PreTrainedTokenizerFast`, not
`LlamaTokenizer`: transformers v5's LlamaTokenizer is a BPE tokenizer
whatever tokenizer.json holds, and splits this Unigram model's text wrongly.

Limits: only Unigram models (what `python -m doremi_jax.tokenizer` trains
by default) are converted; `unsupported` says why another gets none. As in
every Hugging Face tokenizer, text that spells a special piece ("</s>")
becomes its id; text that spells a byte piece ("<0x41>") may be read as it.
"""

from __future__ import annotations

import base64
from typing import Optional

SPACE = "\u2581"          # SentencePiece's escaped space
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def model_proto(model_bytes: bytes):
  """The SentencePiece ModelProto of a model file's bytes."""
  from sentencepiece import sentencepiece_model_pb2
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_bytes)
  return proto


def _types(proto):
  return proto.SentencePiece.Type


def unsupported(proto) -> Optional[str]:
  """Why the model gets no tokenizer.json (None when it gets one)."""
  spec, t = proto.trainer_spec, _types(proto)
  if spec.model_type != spec.UNIGRAM:
    return (f"its model type is {spec.ModelType.Name(spec.model_type).lower()}; only unigram "
            "models are converted")
  if spec.treat_whitespace_as_suffix:
    return "it treats whitespace as a suffix, which the conversion does not follow"
  user = [p.piece for p in proto.pieces if p.type == t.USER_DEFINED]
  if user:
    return f"it has user-defined pieces ({', '.join(user[:5])}), which are not converted"
  if not proto.pieces or proto.pieces[0].type != t.CONTROL:
    return "its id 0 is not a control piece (our BOS/padding)"
  return None


def _replace(pattern: str, content: str, regex: bool = False) -> dict:
  return {"type": "Replace", "pattern": {"Regex" if regex else "String": pattern},
          "content": content}


def normalizer(proto) -> dict:
  """The normalizer: SentencePiece's normalization, step by step."""
  spec = proto.normalizer_spec
  steps = []
  if spec.precompiled_charsmap:
    steps.append({"type": "Precompiled", "precompiled_charsmap":
                  base64.b64encode(spec.precompiled_charsmap).decode("ascii")})
  if spec.remove_extra_whitespaces:
    steps += [_replace(r"\A +| +\z", "", regex=True), _replace(" {2,}", " ", regex=True)]
  space = SPACE if spec.escape_whitespaces else " "
  if spec.escape_whitespaces:
    steps.append(_replace(" ", SPACE))
  if spec.add_dummy_prefix:
    steps.append({"type": "Prepend", "prepend": space})
  return {"type": "Sequence", "normalizers": steps}


def unigram(proto) -> dict:
  """The Unigram model (see the module docstring for the scores)."""
  t = _types(proto)
  floor = min(p.score for p in proto.pieces if p.type == t.NORMAL)
  vocab = [[p.piece, float(p.score) if p.type == t.NORMAL else float(floor)]
           for p in proto.pieces]
  return {"type": "Unigram", "unk_id": int(proto.trainer_spec.unk_id), "vocab": vocab,
          "byte_fallback": bool(proto.trainer_spec.byte_fallback)}


def _special(ident: int, piece: str) -> dict:
  return {"id": ident, "content": piece, "single_word": False, "lstrip": False,
          "rstrip": False, "normalized": False, "special": True}


def post_processor(bos: str) -> dict:
  """`bos A` for one text, `bos A B` for a pair."""
  seq = lambda s: {"Sequence": {"id": s, "type_id": 0}}
  head = {"SpecialToken": {"id": bos, "type_id": 0}}
  return {"type": "TemplateProcessing", "single": [head, seq("A")],
          "pair": [head, seq("A"), seq("B")],
          "special_tokens": {bos: {"id": bos, "ids": [0], "tokens": [bos]}}}


def decoder(proto) -> dict:
  spec = proto.normalizer_spec
  steps = [_replace(SPACE, " ")] if spec.escape_whitespaces else []
  if proto.trainer_spec.byte_fallback:
    steps.append({"type": "ByteFallback"})
  steps.append({"type": "Fuse"})
  if spec.add_dummy_prefix:
    steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
  return {"type": "Sequence", "decoders": steps}


def tokenizer_json(proto) -> dict:
  """tokenizer.json of a convertible model (`unsupported(proto)` is None)."""
  t = _types(proto)
  special = [_special(i, p.piece) for i, p in enumerate(proto.pieces)
             if p.type in (t.CONTROL, t.UNKNOWN)]
  return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
          "normalizer": normalizer(proto), "pre_tokenizer": None,
          "post_processor": post_processor(proto.pieces[0].piece), "decoder": decoder(proto),
          "model": unigram(proto)}


def tokenizer_config(proto, eos_id: int, max_length: int) -> dict:
  """tokenizer_config.json: a generic fast tokenizer (transformers' v4 and
  v5 both load `PreTrainedTokenizerFast` from tokenizer.json), BOS and
  padding id 0, prompts padded on the left (generation)."""
  pieces, spec = proto.pieces, proto.trainer_spec
  return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": pieces[0].piece,
          "eos_token": pieces[eos_id].piece, "unk_token": pieces[spec.unk_id].piece,
          "pad_token": pieces[0].piece, "model_max_length": int(max_length),
          "padding_side": "left", "clean_up_tokenization_spaces": False}
