"""Data: corpora served as seqio Tasks/Mixtures and the host-local batch loader."""
