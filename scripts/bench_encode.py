"""The Python half of scripts/bench-encode (run that; usage there): raw ONNX Runtime and sentence-transformers on
the texts duet encoded, then the side-by-side table (stdout, and DIR/encode.json + DIR/encode.md with --out)."""

import argparse
import datetime
import json
import os
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

CHARS_PER_TOKEN = 32  # as duet: texts are cut at max_tokens x 32 characters before tokenising


def texts_of(corpus: Path, limit: int) -> list[str]:
    texts = []
    with corpus.open() as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line).get("text", ""))
            if len(texts) >= limit:
                break
    return texts


def quantiles(values: list[float]) -> tuple[float, float]:
    s = sorted(values)
    pick = lambda q: s[round((len(s) - 1) * q)]
    return pick(0.5), pick(0.9)


def raw_ort(model: Path, texts: list[str], batch: int, threads: int) -> dict:
    manifest = tomllib.loads((model / "model.toml").read_text())
    max_tokens = manifest["max_tokens"]
    tok = Tokenizer.from_file(str(model / manifest.get("tokenizer", "tokenizer.json")))
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    pad_id = tok.token_to_id(manifest.get("pad_token", "[PAD]")) or 0
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model / manifest.get("onnx", "model.onnx")), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]

    def encode(chunk: list) -> np.ndarray:
        n, seq = len(chunk), max(len(e.ids) for e in chunk)
        ids = np.full((n, seq), pad_id, dtype=np.int64)
        mask = np.zeros((n, seq), dtype=np.int64)
        types = np.zeros((n, seq), dtype=np.int64)
        for b, e in enumerate(chunk):
            ids[b, : len(e.ids)] = e.ids
            mask[b, : len(e.ids)] = 1
            types[b, : len(e.ids)] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = types
        states = session.run([output], feed)[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (states * m).sum(1) / np.maximum(m.sum(1), 1.0)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    cut = [t[: max_tokens * CHARS_PER_TOKEN] for t in texts]
    started = time.perf_counter()
    encodings = tok.encode_batch(cut)
    tokenize_s = time.perf_counter() - started
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    encodings = [encodings[i] for i in order]
    tokens = sum(len(e.ids) for e in encodings)
    encode(encodings[:batch])
    started = time.perf_counter()
    for i in range(0, len(encodings), batch):
        encode(encodings[i : i + batch])
    seconds = time.perf_counter() - started + tokenize_s
    step = max(len(encodings) // 32, 1)
    latencies = []
    for i in order[::step][:32]:
        started = time.perf_counter()
        encode([tok.encode(cut[i])])
        latencies.append((time.perf_counter() - started) * 1e3)
    p50, p90 = quantiles(latencies)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "texts_per_second": len(texts) / seconds, "latency_ms_p50": p50, "latency_ms_p90": p90}


def sentence_transformers(folder: str, texts: list[str], batch: int, threads: int, tokens: int) -> dict | None:
    if not folder or not Path(folder).is_dir():
        return None
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    torch.set_num_threads(threads)
    model = SentenceTransformer(folder, device="cpu")
    model.max_seq_length = 256
    model.encode(texts[:batch], batch_size=batch)
    started = time.perf_counter()
    model.encode(texts, batch_size=batch, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens_per_second": tokens / seconds, "texts_per_second": len(texts) / seconds}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scratch", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--st-model", default="")
    p.add_argument("--out", default="")
    p.add_argument("models", nargs="+", type=Path)
    a = p.parse_args()
    texts = texts_of(a.corpus, a.limit)
    cores = os.cpu_count() or 1
    flop_limit = float(os.environ.get("BENCH_FLOP_TOKENS_PER_CORE", "4350")) * min(a.threads, cores)
    st = None
    rows = []
    for model in a.models:
        name = model.name
        duet = {k: json.loads((a.scratch / f"{name}.{k}.json").read_text()) for k in ("direct", "unsorted", "queue")}
        print(f"bench-encode: {name}: raw ONNX Runtime", flush=True)
        raw = raw_ort(model, texts, a.batch, a.threads)
        if st is None:
            print("bench-encode: sentence-transformers (fp32)", flush=True)
            st = sentence_transformers(a.st_model, texts, a.batch, a.threads, raw["tokens"]) or {}
        best = max(duet["direct"]["tokens_per_second"], duet["queue"]["tokens_per_second"])
        rows.append({
            "model": name,
            "duet_direct_tokens_per_second": duet["direct"]["tokens_per_second"],
            "duet_corpus_order_tokens_per_second": duet["unsorted"]["tokens_per_second"],
            "duet_queue_tokens_per_second": duet["queue"]["tokens_per_second"],
            "duet_texts_per_second": duet["direct"]["texts_per_second"],
            "duet_latency_ms_p50": duet["direct"]["latency_ms_p50"],
            "ort_tokens_per_second": raw["tokens_per_second"],
            "ort_latency_ms_p50": raw["latency_ms_p50"],
            "st_tokens_per_second": st.get("tokens_per_second"),
            "duet_over_ort": best / raw["tokens_per_second"],
            "duet_over_st": best / st["tokens_per_second"] if st else None,
            "share_of_flop_limit": best / flop_limit,
            "tokens": raw["tokens"],
        })
    report = {"date": datetime.date.today().isoformat(), "cores": cores, "threads": a.threads, "batch": a.batch,
              "texts": len(texts), "corpus": a.corpus.name, "flop_limit_tokens_per_second": flop_limit, "rows": rows}
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    lines = [
        f"Encoder: {len(texts)} texts of {a.corpus.parent.name} sorted by length, batch {a.batch}, {a.threads} threads, "
        f"{cores} cores, {report['date']} (FLOP limit {flop_limit:,.0f} tokens/s)",
        "",
        "| model | duet direct tok/s | duet corpus order tok/s | duet queue+bulk tok/s | raw ORT tok/s | "
        "sentence-transformers tok/s | duet / ORT | duet / ST | of FLOP limit | batch-1 p50 duet / ORT ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['duet_direct_tokens_per_second']:,.0f} | {r['duet_corpus_order_tokens_per_second']:,.0f} "
            f"| {r['duet_queue_tokens_per_second']:,.0f} | {r['ort_tokens_per_second']:,.0f} "
            f"| {fmt(r['st_tokens_per_second'], ',.0f')} | {r['duet_over_ort']:.2f} | {fmt(r['duet_over_st'], '.2f')} "
            f"| {r['share_of_flop_limit']:.2f} | {r['duet_latency_ms_p50']:.1f} / {r['ort_latency_ms_p50']:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "encode.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "encode.md").write_text(table)


if __name__ == "__main__":
    main()
