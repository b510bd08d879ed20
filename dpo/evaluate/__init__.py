"""Measuring samples: rewards (our classifier and reward model, Hugging Face classifiers, ROUGE-L), the
sequence-level KL to a reference, the LLM judge, win rates and Best-of-N.

    python -m dpo.evaluate reward SAMPLES.jsonl --reward classifier:DIR --reference-model SFT_DIR --out OUT
    python -m dpo.evaluate winrate SAMPLES.jsonl --judge llm --task summary_concise --out OUT
"""
