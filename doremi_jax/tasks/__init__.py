"""Downstream task evaluation (issue 26, in progress).

scoring.py        log-likelihoods of continuations given contexts, requests
                  packed into rows with segment ids (no request sees
                  another), is_greedy, whole documents in rolling windows,
                  and the multiple-choice metrics the field reports at small
                  scale
encode.py         requests tokenised as lm-eval does
requests.py       our JSONL request format
trained.py        a run directory's model, parameters and vocabulary
lm_eval_model.py  the lm-evaluation-harness model `doremi_jax` (run it with
                  `python -m doremi_jax.lm_eval`)
"""
