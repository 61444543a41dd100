"""Published domain weights for The Pile (22 domains), usable as Step 3
presets: the Pile's own baseline mixture (256k-vocabulary token counts) and
the weights DoReMi found with a 280M proxy (Xie et al. 2023, Table 1/2)."""

PILE_BASELINE = {
    "Pile-CC": 0.1121, "OpenWebText2": 0.1247, "Wikipedia (en)": 0.0919,
    "YoutubeSubtitles": 0.0042, "PhilPapers": 0.0027, "Books3": 0.0676, "Github": 0.0427,
    "StackExchange": 0.0929, "HackerNews": 0.0075, "PubMed Abstracts": 0.0845,
    "Ubuntu IRC": 0.0074, "Gutenberg (PG-19)": 0.0199, "Enron Emails": 0.0030,
    "NIH ExPorter": 0.0052, "EuroParl": 0.0043, "BookCorpus2": 0.0044,
    "OpenSubtitles": 0.0124, "PubMed Central": 0.1071, "FreeLaw": 0.0386, "ArXiv": 0.1052,
    "USPTO Backgrounds": 0.0420, "DM Mathematics": 0.0198,
}

PILE_DOREMI_280M = {
    "Pile-CC": 0.6057, "OpenWebText2": 0.1019, "Wikipedia (en)": 0.0699,
    "YoutubeSubtitles": 0.0502, "PhilPapers": 0.0274, "Books3": 0.0224, "Github": 0.0179,
    "StackExchange": 0.0153, "HackerNews": 0.0134, "PubMed Abstracts": 0.0113,
    "Ubuntu IRC": 0.0093, "Gutenberg (PG-19)": 0.0072, "Enron Emails": 0.0070,
    "NIH ExPorter": 0.0063, "EuroParl": 0.0062, "BookCorpus2": 0.0061,
    "OpenSubtitles": 0.0047, "PubMed Central": 0.0046, "FreeLaw": 0.0043, "ArXiv": 0.0036,
    "USPTO Backgrounds": 0.0036, "DM Mathematics": 0.0018,
}

PRESETS = {"pile_baseline": PILE_BASELINE, "pile_doremi_280m": PILE_DOREMI_280M}
