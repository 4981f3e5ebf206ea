#!/usr/bin/env python3
"""Builds the quality study's text corpus from files already on the machine (the GPU machine
reaches no network): by default the Python standard library's sources, plus any --extra folders
(e.g. /usr/share/doc). Each file goes to train or held-out by a hash of its path relative to its
root, so the split does not depend on the order files are found in; the held-out share is about
--heldout-percent. Files are joined with a blank line and a '# file: <path>' header.

    python3 scripts/quality_corpus.py --out corpus/            -> corpus/train.txt, corpus/heldout.txt
"""

import argparse
import hashlib
import os
import sysconfig

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst")


def files_under(root, suffixes, skip=("site-packages", "__pycache__", "test", "tests", "idlelib")):
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in skip)
        for name in sorted(names):
            if name.endswith(suffixes):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, root), path


def is_heldout(relative, percent):
    return int(hashlib.sha256(relative.encode()).hexdigest()[:8], 16) % 10000 < percent * 100


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for train.txt and heldout.txt")
    parser.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--extra", nargs="*", default=[], help="more folders of text files")
    parser.add_argument("--heldout-percent", type=float, default=2.0)
    parser.add_argument("--max-file-bytes", type=int, default=1 << 20)
    parser.add_argument("--max-total-mb", type=float, default=None,
                        help="stop adding files once the corpus has this many MB of characters")
    args = parser.parse_args(argv)
    if not 0 < args.heldout_percent < 100:
        raise ValueError(f"--heldout-percent must be in (0, 100), got {args.heldout_percent}")
    os.makedirs(args.out, exist_ok=True)
    counts = {"train": [0, 0], "heldout": [0, 0]}
    with open(os.path.join(args.out, "train.txt"), "w", encoding="utf-8") as train, \
            open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as heldout:
        for root, suffixes in [(args.stdlib, (".py",))] + [(e, TEXT_SUFFIXES) for e in args.extra]:
            for relative, path in files_under(root, suffixes):
                if args.max_total_mb is not None and counts["train"][1] + counts["heldout"][1] >= args.max_total_mb * 1e6:
                    break
                try:
                    if os.path.getsize(path) > args.max_file_bytes:
                        continue
                    with open(path, encoding="utf-8") as f:
                        text = f.read()
                except (OSError, UnicodeDecodeError):
                    continue                      # unreadable or not UTF-8: not text for this corpus
                split = "heldout" if is_heldout(relative, args.heldout_percent) else "train"
                (heldout if split == "heldout" else train).write(f"# file: {relative}\n{text}\n\n")
                counts[split][0] += 1
                counts[split][1] += len(text)
    for split, (files, chars) in counts.items():
        print(f"{split}: {files} files, {chars / 1e6:.1f}M characters")


if __name__ == "__main__":
    main()
