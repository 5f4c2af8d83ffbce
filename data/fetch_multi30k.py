#!/usr/bin/env python3
"""Fetch Multi30K task 1 raw data (train, val, test_2016_flickr; en, de, fr, cs) and check it.

Usage: python data/fetch_multi30k.py [DIR]   (DIR defaults to $MULTI30K_DIR, else data/multi30k)

Nothing is downloaded when DIR already holds every file with the expected line counts (e.g.
MULTI30K_DIR=../shared/multi30k). Without network and without the files it stops with one line
saying what to set. Exit status 0 when DIR is complete, 2 otherwise.
"""
from __future__ import annotations

import gzip
import os
import sys
import urllib.request
from pathlib import Path

SOURCE = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
SPLITS = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}
LANGUAGES = ("en", "de", "fr", "cs")


def count_lines(path: Path) -> int:
    with gzip.open(path, "rb") as handle:
        return sum(1 for _ in handle)


def missing_files(directory: Path) -> list:
    """Names of files absent from `directory` or with the wrong number of lines."""
    bad = []
    for split, expected in SPLITS.items():
        for lang in LANGUAGES:
            path = directory / f"{split}.{lang}.gz"
            if not path.exists() or count_lines(path) != expected:
                bad.append(path.name)
    return bad


def fetch(directory: Path, names: list) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = directory / name
        partial = target.with_name(name + ".part")
        with urllib.request.urlopen(f"{SOURCE}/{name}", timeout=60) as response:
            partial.write_bytes(response.read())
        os.replace(partial, target)  # never leave a half-written file under the real name


def main(argv: list) -> int:
    directory = Path(argv[1] if len(argv) > 1 else os.environ.get("MULTI30K_DIR", "data/multi30k"))
    todo = missing_files(directory)
    if not todo:
        print(f"Multi30K is complete in {directory}")
        return 0
    try:
        fetch(directory, todo)
    except OSError as error:
        print(f"fetch_multi30k: cannot download {len(todo)} Multi30K files into {directory} "
              f"({error}); set MULTI30K_DIR to a directory that holds "
              "{train,val,test_2016_flickr}.{en,de,fr,cs}.gz", file=sys.stderr)
        return 2
    still = missing_files(directory)
    if still:
        print(f"fetch_multi30k: wrong line counts after download: {', '.join(still)}", file=sys.stderr)
        return 2
    print(f"Multi30K fetched into {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
