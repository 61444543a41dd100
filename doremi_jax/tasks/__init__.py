"""Downstream task evaluation (issue 26, in progress).

scoring.py  log-likelihoods of continuations given contexts, requests packed
            into rows with segment ids (no request sees another), and the
            multiple-choice metrics the field reports at small scale
decode.py   greedy generation with a key/value cache (one prefill and one
            single-token step program per model), and lm-eval's
            generate_until: text in, text cut at its stop strings out
"""
