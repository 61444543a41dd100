"""The lm-evaluation-harness model `doremi_jax`: a trained run scored by our
own code (`scoring`), so lm-eval's hundreds of tasks run on our models.

Importing this module registers the model with lm-eval (0.4.x, core: no
torch). lm-eval 0.4.13 finds models only in its own table
(`lm_eval.models.MODEL_MAPPING`) and in modules that the running process
has imported; it reads no entry points. So the plain `lm_eval` command
cannot find ours, and `python -m doremi_jax.lm_eval ARGS...` (the
`doremi_jax/lm_eval.py` module) imports this one and then runs lm-eval's
own command line with the same arguments:

  python -m doremi_jax.lm_eval --model doremi_jax \\
      --model_args run_dir=RUN[,step=N,batch_size=B,max_length=L,stride=S] \\
      --tasks hellaswag,arc_easy

In Python: `import doremi_jax.tasks.lm_eval_model`, then
`lm_eval.simple_evaluate(model="doremi_jax", model_args={...}, ...)`.

Model arguments: `run_dir` (a stage's or a pipeline's workdir, read by
`trained.load`), `step` (a checkpoint; default the newest), `batch_size`
(rows of `max_length` tokens per forward pass, each row packing several
requests; default 8; lm-eval's `--batch_size` is the same number, and a
`batch_size` in `--model_args` wins over it), `max_length` (the row
length; default the run's training sequence length; a longer request
keeps its continuation and the end of its context), `stride` (tokens
scored per window after the first when `loglikelihood_rolling` cuts a long
document, `scoring.rolling_windows`; default half a row).

Several processes: each reports rank 0 of 1, so every process is given
every request, scores them all on its first local device and computes the
same metrics (lm-eval's own request splitting needs torch.distributed-style
gathers, which this model does not provide); write outputs from one
process only.
"""

from __future__ import annotations

import logging
from typing import Optional

# lm-eval imports its own models' table only while its registry is empty:
# import it before registering ours, or they could no longer be found.
import lm_eval.models  # noqa: F401
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from doremi_jax.config import ConfigError
from doremi_jax.tasks import encode, scoring, trained

NAME = "doremi_jax"
DEFAULT_BATCH_ROWS = 8
DEFAULT_MAX_GEN_TOKS = 256      # lm-eval's own default for generate_until
ARGS = ("run_dir", "step", "batch_size", "max_length", "stride")
IGNORED = ("max_batch_size", "device")   # lm-eval passes these to every model
log = logging.getLogger(__name__)


def _positive_int(name: str, value, allow_none: bool = True,
                  where: str = "--model_args") -> Optional[int]:
  """`value` as a positive int (None passes when allowed); ConfigError
  naming the argument otherwise."""
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f"{where} {name}={value!r}: {name} must be a positive integer.")
  return value


def batch_rows_of(batch_size) -> int:
  """Rows per forward pass from lm-eval's batch size: a positive integer,
  or 'auto' (lm-eval's memory probe; here the default of 8 rows)."""
  if isinstance(batch_size, str) and batch_size.startswith("auto"):
    log.info("batch_size=%s: doremi_jax does not probe memory; using %d rows per forward",
             batch_size, DEFAULT_BATCH_ROWS)
    return DEFAULT_BATCH_ROWS
  if isinstance(batch_size, str) and batch_size.isdigit():
    batch_size = int(batch_size)
  return _positive_int("batch_size", batch_size, allow_none=False)


@register_model(NAME)
class DoremiJaxLM(LM):
  """lm-eval's `LM` over a trained run (see the module docstring)."""

  def __init__(self, run_dir=None, step=None, batch_size=DEFAULT_BATCH_ROWS, max_length=None,
               stride=None, **others):
    super().__init__()
    unknown = sorted(set(others) - set(IGNORED))
    if unknown:
      raise ConfigError(f"--model_args {', '.join(unknown)}: not an argument of the "
                        f"{NAME} model; it takes {', '.join(ARGS)}.")
    if not run_dir:
      raise ConfigError(f"the {NAME} model needs --model_args run_dir=RUN (the workdir of a "
                        "finished stage, or of a pipeline).")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
      raise ConfigError(f"--model_args step={step!r}: step must be a checkpoint's step, a "
                        "non-negative integer.")
    self.run = trained.load(str(run_dir), step)
    self.batch_rows = batch_rows_of(batch_size)
    self.max_length = _positive_int("max_length", max_length) or self.run.seq_len
    if self.max_length > self.run.model_cfg.max_len:
      raise ConfigError(f"--model_args max_length={self.max_length} exceeds the model's "
                        f"ModelConfig.max_len={self.run.model_cfg.max_len}; choose at most that.")
    self.stride = _positive_int("stride", stride)
    if self.stride is not None and self.stride > self.max_length:
      raise ConfigError(f"--model_args stride={self.stride} exceeds max_length="
                        f"{self.max_length}; choose at most that.")

  @classmethod
  def create_from_arg_obj(cls, arg_dict, additional_config=None):
    """The model from `--model_args` (a dict) and lm-eval's own
    `batch_size`, `max_batch_size` and `device`; an argument given in both
    is taken from `--model_args`."""
    extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
    return cls(**{**extra, **dict(arg_dict)})

  @classmethod
  def create_from_arg_string(cls, arg_string, additional_config=None):
    """`create_from_arg_obj` of `key=value,...` as lm-eval parses it."""
    from lm_eval.utils import simple_parse_args_string
    return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

  def _score_kwargs(self) -> dict:
    return {"seq_len": self.max_length, "batch_rows": self.batch_rows}

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list:
    """[(log-likelihood of the continuation, is_greedy)] of lm-eval's
    (context, continuation) requests, tokenised by `encode.encode_pair`."""
    pairs = [encode.encode_pair(self.run.vocabulary, *r.args) for r in requests]
    if not pairs:
      return []
    loglik, greedy = scoring.loglikelihoods(self.run.model, self.run.params, pairs,
                                            greedy=True, **self._score_kwargs())
    out = [(float(s), bool(g)) for s, g in zip(loglik, greedy)]
    for r, result in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood", r.args, result)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list:
    """[log-likelihood of the whole text] of lm-eval's (text,) requests, every
    token predicted once, the first from the document start alone."""
    docs = [self.run.vocabulary.encode(r.args[0]) for r in requests]
    if not docs:
      return []
    loglik = scoring.rolling_loglikelihoods(self.run.model, self.run.params, docs,
                                            stride=self.stride, **self._score_kwargs())
    out = [float(s) for s in loglik]
    for r, result in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood_rolling", r.args, result)
    return out

  def generate_until(self, requests, disable_tqdm: bool = False) -> list:
    """[greedy generation] of lm-eval's (context, {"until", "max_gen_toks",
    ...}) requests, cut before the first stop string, all decoded together
    by `doremi_jax.tasks.decode.generate_until` (each with its own stop
    strings and token limit)."""
    from doremi_jax.tasks import decode
    settings = [generation_settings(r.args[1]) for r in requests]
    out = decode.generate_until(self.run.model, self.run.params, self.run.vocabulary,
                                [r.args[0] for r in requests], [list(u) for u, _ in settings],
                                [n for _, n in settings], max_len=self.max_length,
                                batch_size=self.batch_rows)
    for r, text in zip(requests, out):
      self.cache_hook.add_partial("generate_until", r.args, text)
    return out


def generation_settings(kwargs) -> tuple:
  """(stop strings as a tuple, max new tokens) of one request's lm-eval
  generation arguments. Decoding is greedy: a request asking to sample is
  decoded greedily, with a warning; other arguments are ignored."""
  kwargs = dict(kwargs or {})
  until = kwargs.pop("until", None) or ()
  until = (until,) if isinstance(until, str) else tuple(until)
  max_gen_toks = kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
  _positive_int("max_gen_toks", max_gen_toks, allow_none=False,
                where="a task's generation_kwargs")
  if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0) or 0.0) > 0:
    log.warning("%s decodes greedily; a request's sampling arguments are ignored", NAME)
  return until, int(max_gen_toks)

