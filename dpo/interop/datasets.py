"""The published datasets, fetched and inspected from the command line.

    python -m dpo.interop.datasets download imdb|tldr|tldr-comparisons|hh|ultrafeedback --out DIR
    python -m dpo.interop.datasets summary FORMAT PATH [--split S] [--tokenizer DIR ...]

download fetches the files of the paper's datasets as their authors publish them (files already complete
are kept, partial ones resumed); summary reads a dataset with dpo.data's reader of that format and prints
what the training run would print (records read and left out, and with --tokenizer the token lengths and
what truncation drops).
"""
import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from dpo import data, formats
from dpo.batching import PROMPT_TRUNCATION_SIDES, TRUNCATIONS, load_tokenized
from dpo.errors import entry_point
from dpo.files import check_writable
from dpo.interop.download import download
from dpo.tokenizer import Tokenizer

BASE_URL_ENV = "DPO_DATA_BASE_URL"  # replaces scheme://host of every URL below (tests, mirrors)
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SIZE = 84_125_825
OPENAI_URL = "https://openaipublic.blob.core.windows.net/summarize-from-feedback"
HUB_DATASETS = "https://huggingface.co/datasets"
HH_URL = "https://raw.githubusercontent.com/anthropics/hh-rlhf/master"
# name -> [(url, path under --out, expected size or None: then the server's Content-Length is checked)]
DOWNLOADS = {
    "imdb": [(IMDB_URL, "aclImdb_v1.tar.gz", IMDB_SIZE)],
    "tldr": [(f"{OPENAI_URL}/datasets/tldr_3_filtered/{s}.jsonl", f"tldr_3_filtered/{s}.jsonl", None)
             for s in formats.TLDR_SFT_SPLITS],
    "tldr-comparisons": [(f"{OPENAI_URL}/dataset/comparisons/{f}", f"comparisons/{f}", None)
                         for f in formats.TLDR_COMPARISON_FILES],
    "hh": [(f"{HH_URL}/{subset}/{s}.jsonl.gz", f"hh-rlhf/{subset}/{s}.jsonl.gz", None)
           for subset in formats.HH_SUBSETS for s in ("train", "test")],
    # HuggingFaceH4/ultrafeedback_binarized's preference splits (conversational pairs; format preference_jsonl)
    "ultrafeedback": [(f"{HUB_DATASETS}/HuggingFaceH4/ultrafeedback_binarized/resolve/main/data/{s}_prefs-00000-of-00001.parquet",
                       f"ultrafeedback/{s}_prefs.parquet", None) for s in ("train", "test")],
}


def download_dataset(name: str, out, base_url: str | None = None) -> list[Path]:
    """Fetch the published files of `name` (a key of DOWNLOADS) under `out`; files already complete are
    kept, partial ones resumed. Raises dpo.interop.download.DownloadError (e.g. offline) or DataError."""
    if name not in DOWNLOADS:
        raise data.DataError(f"unknown dataset {name!r}; valid: {', '.join(DOWNLOADS)}")
    base_url = base_url or os.environ.get(BASE_URL_ENV)
    paths = []
    for url, rel, size in DOWNLOADS[name]:
        if base_url:
            url = base_url.rstrip("/") + urlsplit(url).path
        paths.append(download(url, Path(out) / rel, expected_size=size, desc=rel))
    return paths


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo.interop.datasets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch a published dataset")
    p.add_argument("name", choices=list(DOWNLOADS))
    p.add_argument("--out", required=True, help="folder to put the files in")
    p.add_argument("--base-url", default=None, help=f"replace the host of the URLs (or ${BASE_URL_ENV})")
    p = sub.add_parser("summary", help="read a dataset and print its summary")
    p.add_argument("format", choices=list(formats.FORMATS))
    p.add_argument("path")
    p.add_argument("--split", default="train")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder: adds token statistics (sft, preference)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--truncation", default="reference", choices=TRUNCATIONS)
    p.add_argument("--prompt-truncation-side", default=None, choices=PROMPT_TRUNCATION_SIDES)
    p.add_argument("--limit", type=int, default=0, help="tokenize a seeded random subset of this many")
    args = parser.parse_args(argv)
    if args.command == "download":
        check_writable(args.out, "--out", folder=True)
        for path in download_dataset(args.name, args.out, args.base_url):
            print(path)
        return 0
    if args.limit < 0:
        raise data.DataError(f"--limit must be >= 0 (0: every example), got {args.limit}")
    if not args.tokenizer:
        _, _, counts = formats.load_examples(args.format, args.path, args.split)
        print(data.format_summary(f"{args.format} {args.path} [{args.split}]", counts))
        return 0
    print(load_tokenized(args.format, args.path, args.split, Tokenizer.from_pretrained(args.tokenizer),
                         max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                         truncation=args.truncation, prompt_truncation_side=args.prompt_truncation_side,
                         limit=args.limit)[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
