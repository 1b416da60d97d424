#!/usr/bin/env python3
"""Build the evaluation and development sets that ship inside the package (rlaif/data/).

The sets come from the project's development data folder (the `shared/data` folder of the development machines,
see its README): the five `*.dev.jsonl` files are copied byte for byte with their upstream licences, and a
manifest (bytes, lines, SHA-256) is written next to them. The Constitutional AI paper's prompt files have no
licence and are not shipped. This script is the only place in the repository that knows where that folder is:
everything else reads the packaged copy (or RLAIF_DATA_DIR).

    python scripts/build_data.py                 # rebuild rlaif/data from ../shared/data
    python scripts/build_data.py --check         # verify rlaif/data against its manifest (no source needed)
    python scripts/build_data.py --source DIR    # rebuild from another copy of the development data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "rlaif" / "data"
DEFAULT_SOURCE = REPO.parent / "shared" / "data"

# file -> licence file that covers it (every shipped set carries its licence).
SETS = {
    "red_team_prompts.dev.jsonl": "LICENSE.hh-rlhf",
    "helpful_prompts.dev.jsonl": "LICENSE.hh-rlhf",
    "preference_pairs.dev.jsonl": "LICENSE.hh-rlhf",
    "xstest_prompts.dev.jsonl": "LICENSE.xstest",
    "advbench_behaviors.dev.jsonl": "LICENSE.advbench",
}
COPIED_LICENCES = ("LICENSE.hh-rlhf", "LICENSE.xstest")

# AdvBench's upstream (llm-attacks/llm-attacks) is MIT; the development data folder carries no copy of the text,
# so it is written here verbatim from the upstream LICENSE.
ADVBENCH_LICENCE = """MIT License

Copyright (c) 2023 Andy Zou

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def describe(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    lines = data.count(b"\n") if path.suffix == ".jsonl" else None
    return {"bytes": len(data), "lines": lines, "sha256": hashlib.sha256(data).hexdigest()}


def build(source: Path) -> None:
    if not (source / "README.md").is_file():
        sys.exit(f"build_data: {source} is not the development data folder (no README.md); pass --source DIR")
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in (*SETS, *COPIED_LICENCES):
        shutil.copyfile(source / name, TARGET / name)
    (TARGET / "LICENSE.advbench").write_text(ADVBENCH_LICENCE, encoding="utf-8")
    # The source folder's own manifest must agree with what was copied (it pins the upstream derivation).
    upstream = json.loads((source / "manifest.json").read_text(encoding="utf-8"))["files"]
    for name in (*SETS, *COPIED_LICENCES):
        if upstream[name]["sha256"] != describe(TARGET / name)["sha256"]:
            sys.exit(f"build_data: {name} does not match {source / 'manifest.json'}")
    files = sorted([*SETS, *COPIED_LICENCES, "LICENSE.advbench"])
    manifest = {"licences": SETS, "files": {name: describe(TARGET / name) for name in files}}
    (TARGET / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    total = sum(int(entry["bytes"]) for entry in manifest["files"].values())  # type: ignore[call-overload]
    print(f"build_data: wrote {len(files)} files to {TARGET} ({total / 1e6:.2f} MB)")


def check() -> int:
    manifest = json.loads((TARGET / "manifest.json").read_text(encoding="utf-8"))
    bad = [name for name, entry in manifest["files"].items() if describe(TARGET / name) != entry]
    for name in bad:
        print(f"build_data: {TARGET / name} differs from manifest.json", file=sys.stderr)
    if not bad:
        print(f"build_data: {len(manifest['files'])} files match {TARGET / 'manifest.json'}")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the development data folder")
    parser.add_argument("--check", action="store_true", help="verify rlaif/data against its manifest")
    args = parser.parse_args()
    if args.check:
        return check()
    build(args.source)
    return check()


if __name__ == "__main__":
    sys.exit(main())
