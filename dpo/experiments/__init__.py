"""Reproductions of the paper's experiments: one driver module per experiment, shared pieces beside them.

    python -m dpo.experiments.imdb --config configs/imdb/mini.yaml --stage all

pairs.py    k scored samples per prompt -> all ordered preference pairs (IMDB, TL;DR miniature)
common.py   JSON lines and CSV writers, held-out prompts, launching train.py, checkpoint listing, sweeps
imdb.py     the IMDB controlled-sentiment frontier (Figure 2, left)
tldr.py     TL;DR summarization and Anthropic HH win rates (Figure 2 right, Figure 3)
"""
