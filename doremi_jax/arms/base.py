"""What a study arm is, and the registry of arm kinds.

An arm kind is one small class: which specs it answers to (`matches`), how
it checks its settings before anything trains (`check`), how it prepares
its mixture or schedule by running its method's own runs (`prepare_all`,
once for all the study's arms of the kind, e.g. one iterated DoReMi run for
'doremi' and 'doremi:2'), how each seed's main-model run trains (`train`),
which mixture it reports (`rates`) and which method runs its cost is
charged with (`method_runs`). The study stage only calls these; it never
looks at an arm's spelling.

Kinds register in order (`register`); a spec is the first kind's that
`matches` it, and the weights kind (any weights spec) comes last.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar

import numpy as np

from doremi_jax import rundir
from doremi_jax.config import ConfigError
from doremi_jax.stages import registry as stages


@dataclasses.dataclass
class Study:
  """What the arms of one study share: its directory, corpus and main-model
  config, the study's own settings (`train_study`'s arguments that belong
  to a kind, e.g. `rounds`, `unimax_epochs`) and `shared`, where one kind's
  method runs leave what another kind reuses (DoReMi's round-1 reference
  for online DoReMi). `arms_root` holds the arms' main runs: the study's
  directory, or a ladder rung's (`rundir.rung_dir`), whose `cfg` is that
  rung's main-model config; the methods' own runs stay under `root`."""
  root: Any
  corpus: Any
  cfg: Any
  settings: dict
  shared: dict = dataclasses.field(default_factory=dict)
  arms_root: Any = None
  only: Any = None   # the method seeds `restricted` to, in its block

  @contextlib.contextmanager
  def restricted(self, seeds: list):
    """`method_seeds` is `seeds` in the block: a study's task runs one seed's
    method runs (`doremi_jax.plan`)."""
    self.only = list(seeds)
    try:
      yield
    finally:
      self.only = None

  def __post_init__(self):
    if self.arms_root is None:
      self.arms_root = self.root

  def arm_dir(self, arm: str, seed: int):
    """Seed `seed`'s main run of `arm` (in this study or rung)."""
    return rundir.arm_dir(self.arms_root, arm, seed)

  def say(self, msg: str):
    rundir.announce("study", msg)

  @property
  def per_seed(self) -> bool:
    """Whether every seed runs the methods' own runs itself (with its seed),
    `train_study.method_seeds='per_seed'`, or all seeds share one."""
    return self.settings.get("method_seeds", "per_seed") == "per_seed"

  def method_seeds(self) -> list:
    """The seeds the methods' own runs are made with: every study seed, or
    [None] (one run, TrainConfig's seed, shared by every seed)."""
    if self.only is not None:
      return list(self.only)
    return list(range(self.settings["seeds"])) if self.per_seed else [None]

  def method_seed(self, seed: int):
    """The method run that the main run of study seed `seed` uses."""
    return seed if self.per_seed else None

  def method_dir(self, name: str, seed, scale=None):
    return rundir.method_dir(self.root, name, seed, scale)

  def domain_rates(self, weights: dict) -> np.ndarray:
    """{domain: weight} -> [K] float64 in the corpus's domain order."""
    return np.array([weights[d] for d in self.corpus.domains], np.float64)


class Arm:
  """One arm of one study (see the module docstring). `kind` names the kind;
  `spelling` is how users write it (listed in errors); `static`: the
  mixture is known before anything trains."""
  kind: ClassVar[str] = ""
  spelling: ClassVar[str] = ""
  static: ClassVar[bool] = False
  fallback: ClassVar[bool] = False   # matches anything: stays after every other kind

  def __init__(self, name: str, spec: Any, study: Study):
    self.name, self.spec, self.study = name, spec, study
    self.method_runs: list = []   # run directories charged to this arm's cost
    self.final: dict = {}         # {method seed: mixture} of a method's arm

  @classmethod
  def matches(cls, spec: Any) -> bool:
    raise NotImplementedError

  def charge(self, *runs) -> None:
    """Charges the method runs `runs` to the arm's cost, each once (a
    study's workers may read the same runs more than once)."""
    for run in runs:
      if str(run) not in self.method_runs:
        self.method_runs.append(str(run))

  def check(self) -> None:
    """Raises ConfigError before anything trains if the arm cannot work."""

  @classmethod
  def prepare_all(cls, arms: list, study: Study) -> None:
    """Runs the method's own runs for all of the study's arms of this kind
    (for each of `study.method_seeds()`), or, where they are done, reads
    their results; it may read what earlier kinds' `prepare_all` left in
    `study.shared` for the same seeds."""

  @classmethod
  def method_subtasks(cls, arms: list, study: Study, seed) -> list:
    """Method runs for method seed `seed` that a study's workers may train
    apart, before `prepare_all` reads them: [(key, fn, complete, what)]
    (`fn()` trains one, `complete()` says whether it is done; e.g. a split
    swarm's groups). None by default: `prepare_all` trains everything."""
    return []

  @classmethod
  def has_method_runs(cls) -> bool:
    """Whether the kind has its own `prepare_all` (a study plans it a task
    per method seed)."""
    return cls.prepare_all.__func__ is not Arm.prepare_all.__func__

  def weights(self, seed: int = 0) -> Any:
    """What `train_main_model.weights` trains seed `seed` of this arm with:
    a method's mixture from its runs for that seed (`method_seed`)."""
    return self.final[self.study.method_seed(seed)]

  def train(self, run_dir: str, seed: int) -> None:
    """Seed `seed`'s main-model run of this arm, in `run_dir`."""
    stages.get("main")(run_dir, weights=self.weights(seed), seed=seed)

  def rates(self, seeds: int) -> np.ndarray:
    """The arm's mixture [K] for the report, once its runs are done (a
    method's: the mean over its seeds' mixtures)."""
    return np.mean([self.study.domain_rates(self.weights(s)) for s in range(seeds)], axis=0)

  def report(self, seeds: int) -> dict:
    """Anything the arm adds to its entry in study.json (e.g. a swarm arm's
    predicted against measured loss), once its runs are done."""
    return {}

  def what(self) -> str:
    return f"train_study.arms[{self.name!r}]"


KINDS: list = []


def register(cls):
  """Class decorator: adds an arm kind after those registered before it
  (but before the fallback kind, which reads any other spec as weights)."""
  if any(k.kind == cls.kind for k in KINDS):
    raise ValueError(f"two arm kinds are named {cls.kind!r}")
  at = next((i for i, k in enumerate(KINDS) if k.fallback), len(KINDS))
  KINDS.insert(at, cls)
  return cls


def unregister(cls) -> None:
  """Removes an arm kind (a test's or a notebook's own)."""
  KINDS.remove(cls)


def spellings() -> list:
  """How users write the methods' arms (every kind that has a spelling)."""
  return [k.spelling() if callable(k.spelling) else k.spelling for k in KINDS if k.spelling]


def make(name: str, spec: Any, study: Study) -> Arm:
  """The arm `name` of `study` from its spec (the first kind that matches;
  its `check` then refuses what cannot work)."""
  for kind in KINDS:
    if kind.matches(spec):
      return kind(name, spec, study)
  raise ConfigError(f"train_study.arms[{name!r}]: {spec!r} is not an arm; write one of "
                    f"{', '.join(spellings())}.")


def by_kind(arms) -> list:
  """[(kind class, [its arms])] in registration order (kinds present only)."""
  out = []
  for kind in KINDS:
    mine = [a for a in arms if type(a) is kind]
    if mine:
      out.append((kind, mine))
  return out

