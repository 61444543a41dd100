"""Downstream task evaluation (issue 26, in progress).

scoring.py  log-likelihoods of continuations given contexts, requests packed
            into rows with segment ids (no request sees another), and the
            multiple-choice metrics the field reports at small scale
"""
