#!/usr/bin/env python3
"""Builds dynamically quantised (int8) variants of prepared model folders (run by `models/prepare`).

For each variant below whose full-precision folder exists (`models/<source>/`, built by prepare.py), it writes
`models/<name>/` beside it:

  model.onnx      onnxruntime.quantization.quantize_dynamic of the source's model.onnx: int8 weights, one scale
                  per output channel, activations quantised at run time
  tokenizer.json  the source's, copied
  model.toml      the source's manifest under the variant's name, with `quantized_from = "../<source>"`, which
                  `duet verify` uses to compare the two (cosine floor 0.99 on the reference texts)
  .prepared.json  stamp: the source's model.onnx hash, this script's hash and ONNX Runtime's version, plus the
                  cosine with the source measured here; a folder whose stamp matches is not built again

The settings were chosen by measurement (README "int8 models"); scripts/make_tiny_models.py uses `quantize()`
for the committed tiny variant.

Usage: quantize.py [--only SOURCE[,SOURCE...]] [--force] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Variant:
    name: str
    source: str
    # "QInt8" or "QUInt8" (onnxruntime.quantization.QuantType)
    weight_type: str = "QInt8"
    # Op types quantised (None: every type quantize_dynamic supports, MatMul and the Gather of the embeddings).
    op_types: list[str] | None = None
    per_channel: bool = True
    # Keep in fp32 the MatMuls whose weight has more rows than columns: in a transformer, the feed-forward output
    # projections (1536 → 384 in MiniLM), whose inputs (after GELU) have the widest range, so one int8 scale per
    # tensor for them loses the most.
    keep_down_projections: bool = False
    # Keep in fp32 the graph's last MatMul: EmbeddingGemma's folded Dense layers (768 → 768, after the final
    # norm), whose int8 form alone cost most of the fidelity.
    keep_output_projection: bool = False


# Measured on MiniLM (README "int8 models"): quantising every MatMul too left `duet verify` at cosine 0.986 (a
# short text padded beside a long one), keeping the down-projections in fp32 at 0.992. EmbeddingGemma (min cosine
# with fp32 on its reference texts, ONNX Runtime): down-projections kept 0.9875; also every attention output
# projection and the output projection 0.9991; the down-projections and the output projection alone 0.9987;
# every MatMul but those, and the embeddings' Gather (800 MB of the 1.2 GB) too: see README "int8 models".
# mpnet and SmolLM2 have no variant yet: not measured.
VARIANTS = [
    Variant(name="minilm-int8", source="minilm", keep_down_projections=True),
    Variant(name="embeddinggemma-int8", source="embeddinggemma", keep_down_projections=True,
            keep_output_projection=True),
]

OUTPUT_FILES = ["model.onnx", "tokenizer.json", "model.toml"]
# License and provenance files travel with the weights: copied from the source folder when it has them.
LICENSE_FILES = ["GEMMA_TERMS.html", "NOTICE.md"]


def outputs(source_dir: Path) -> list[str]:
    return OUTPUT_FILES + [f for f in LICENSE_FILES if (source_dir / f).is_file()]
# The same floor as `duet verify` (src/encoder/verify.rs QUANTIZED_MIN_COSINE).
MIN_COSINE = 0.99


def log(message: str) -> None:
    print(f"quantize: {message}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def down_projections(path: Path) -> list[str]:
    """The MatMul nodes of `path` whose constant weight [rows, cols] has rows > cols."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and len(shapes.get(n.input[1], [])) == 2
            and shapes[n.input[1]][0] > shapes[n.input[1]][1]]


def output_projection(path: Path) -> list[str]:
    """The graph's last MatMul with a constant weight."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    return matmuls[-1:]


def quantize(source: Path, out: Path, weight_type: str = "QInt8", op_types: list[str] | None = None,
             per_channel: bool = True, keep_down_projections: bool = False,
             keep_output_projection: bool = False) -> None:
    """Dynamic quantisation of the ONNX file `source` into `out` (weights inside the file)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic advises pre-processing (quant_pre_process); measured, it did not help (README).
    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(
        str(source),
        str(out),
        per_channel=per_channel,
        weight_type=getattr(QuantType, weight_type),
        op_types_to_quantize=op_types,
        nodes_to_exclude=(down_projections(source) if keep_down_projections else [])
        + (output_projection(source) if keep_output_projection else []) or None,
    )


def variant_manifest(source_toml: str, variant: Variant, built_by: str = "models/prepare") -> str:
    """The source's manifest under the variant's name, with a header saying what it is and `quantized_from`."""
    body = [line for line in source_toml.splitlines() if not line.startswith("# Built by")]
    named = [re.sub(r'^name = ".*"$', f'name = "{variant.name}"', line) for line in body]
    if named == body:
        raise SystemExit(f"quantize: {variant.source}/model.toml has no `name = \"...\"` line")
    header = [
        f"# {variant.name}: {variant.source} (below) dynamically quantised by models/quantize.py: {variant.weight_type}",
        f"# weights, one scale per output channel (per_channel={variant.per_channel}), ops: "
        f"{', '.join(variant.op_types or ['all'])}"
        f"{' but the feed-forward down-projections (kept fp32)' if variant.keep_down_projections else ''}"
        f"{' and the output projection (kept fp32)' if variant.keep_output_projection else ''};",
        "# activations quantised at run time.",
        f"# Built by {built_by}; do not edit (a rebuild overwrites it).",
    ]
    # Top-level keys must come before the manifest's first table ([tasks.*]): right after the name.
    at = next(i for i, line in enumerate(named) if line.startswith("name = ")) + 1
    named.insert(at, f'quantized_from = "../{variant.source}"')
    return "\n".join(header + named) + "\n"


def reference_cosines(source_dir: Path, variant_onnx: Path) -> dict:
    """Cosine of the variant's vectors with the source's on the source's reference texts (ONNX Runtime here;
    `duet verify` repeats the check through Duet's own pipeline)."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    ref = json.loads((source_dir / "reference.json").read_text())
    toml = (source_dir / "model.toml").read_text()
    max_tokens = int(re.search(r"^max_tokens = (\d+)$", toml, re.M).group(1))
    if not re.search(r'^pooling = "mean"$', toml, re.M):
        return {}  # only mean-pooled encoders are checked here
    tok = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)

    def vectors(path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        out = []
        for e in tok.encode_batch(ref["texts"]):
            ids = np.array([e.ids], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if "token_type_ids" in names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            v = session.run(None, feeds)[0][0].mean(0)
            out.append(v / np.linalg.norm(v))
        return np.array(out)

    cos = (vectors(source_dir / "model.onnx") * vectors(variant_onnx)).sum(1)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def expected_stamp(variant: Variant, source_dir: Path) -> dict:
    import onnxruntime

    return {
        "variant": variant.__dict__,
        "quantize_py_sha256": sha256_file(Path(__file__).resolve()),
        "source_model_onnx_sha256": sha256_file(source_dir / "model.onnx"),
        "source_tokenizer_sha256": sha256_file(source_dir / "tokenizer.json"),
        "source_model_toml_sha256": sha256_file(source_dir / "model.toml"),
        "onnxruntime": onnxruntime.__version__,
    }


def up_to_date(folder: Path, stamp: dict, names: list[str]) -> bool:
    try:
        old = json.loads((folder / ".prepared.json").read_text())
    except (OSError, ValueError):
        return False
    if old.get("inputs") != stamp or set(old.get("files", {})) != set(names):
        return False
    return all((folder / n).is_file() and sha256_file(folder / n) == d for n, d in old["files"].items())


def build(variant: Variant, out: Path, force: bool) -> None:
    source_dir = out / variant.source
    folder = out / variant.name
    if not (source_dir / "model.onnx").is_file():
        log(f"{variant.name}: {source_dir} is not prepared, skipped")
        return
    stamp = expected_stamp(variant, source_dir)
    if not force and up_to_date(folder, stamp, outputs(source_dir)):
        log(f"{variant.name}: up to date in {folder}, skipped")
        return
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{variant.name}.", dir=out))
    try:
        quantize(source_dir / "model.onnx", staging / "model.onnx", variant.weight_type, variant.op_types,
                 variant.per_channel, variant.keep_down_projections, variant.keep_output_projection)
        shutil.copyfile(source_dir / "tokenizer.json", staging / "tokenizer.json")
        for name in outputs(source_dir)[len(OUTPUT_FILES):]:
            shutil.copyfile(source_dir / name, staging / name)
        (staging / "model.toml").write_text(variant_manifest((source_dir / "model.toml").read_text(), variant))
        checks = reference_cosines(source_dir, staging / "model.onnx")
        if checks and checks["min_cosine"] < MIN_COSINE:
            raise SystemExit(f"quantize: {variant.name}: cosine with {variant.source} fell to "
                             f"{checks['min_cosine']:.4f} < {MIN_COSINE}")
        files = {n: sha256_file(staging / n) for n in outputs(source_dir)}
        (staging / ".prepared.json").write_text(
            json.dumps({"inputs": stamp, "files": files, "checks": checks}, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.chmod(0o755)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    size = (folder / "model.onnx").stat().st_size / 2**20
    source_size = (source_dir / "model.onnx").stat().st_size / 2**20
    cos = f"; cosine with {variant.source} min {checks['min_cosine']:.5f} mean {checks['mean_cosine']:.5f}" if checks else ""
    log(f"{variant.name}: built in {time.monotonic() - started:.1f} s; model.onnx {size:.1f} MiB "
        f"({source_size:.1f} MiB fp32){cos}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated source model names (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="where model folders are")
    parser.add_argument("--try", dest="trial", action="append", default=[], metavar="NAME:SOURCE:SETTINGS",
                        help="also build an experimental variant, e.g. minilm-x:minilm:keep_down_projections=1,"
                             "weight_type=QUInt8,op_types=MatMul (for measuring settings)")
    args = parser.parse_args()
    variants = list(VARIANTS)
    for trial in args.trial:
        name, source, *settings = trial.split(":")
        variant = Variant(name=name, source=source)
        for setting in ",".join(settings).split(",") if settings and settings[0] else []:
            key, value = setting.split("=")
            if key == "op_types":
                variant.op_types = value.split("+")
            elif key in ("per_channel", "keep_down_projections", "keep_output_projection"):
                setattr(variant, key, value in ("1", "true", "True"))
            else:
                setattr(variant, key, value)
        variants.append(variant)
    if args.only:
        wanted = set(args.only.split(","))
        variants = [v for v in variants if v.source in wanted or v.name in wanted]
    for variant in variants:
        build(variant, args.out.resolve(), args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
