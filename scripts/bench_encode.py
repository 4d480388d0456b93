"""The Python half of scripts/bench-encode (run that; usage there): raw ONNX Runtime on the texts exactly as duet
framed and ordered them (`duet bench-encode --dump-framed`) and sentence-transformers on MiniLM, then the side-by-side
table (stdout, and DIR/encode.json + DIR/encode.md with --out)."""

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


def framed_of(scratch: Path, name: str) -> tuple[list[str], list[int]]:
    """The texts as duet framed them for the network (prompt included), in the order it encoded them, and their
    token counts by duet."""
    lines = [json.loads(l) for l in (scratch / f"{name}.framed.jsonl").read_text().splitlines() if l.strip()]
    return [l["text"] for l in lines], [l["tokens"] for l in lines]


def pool(states: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "output":
        return states
    if pooling == "cls":
        return states[:, 0]
    if pooling == "last-token":
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        return states[np.arange(len(states)), last]
    m = mask[:, :, None].astype(np.float32)
    return (states * m).sum(1) / np.maximum(m.sum(1), 1.0)


def raw_ort(model: Path, framed: list[str], batch: int, threads: int, device: str, samples: int) -> dict:
    """Raw ONNX Runtime on `framed` (already framed and sorted by duet): tokenising, batches of `batch` in that
    order, pooling and normalisation as the manifest says."""
    manifest = tomllib.loads((model / "model.toml").read_text())
    max_tokens = manifest["max_tokens"]
    pooling = manifest.get("pooling", "mean")
    tok = Tokenizer.from_file(str(model / manifest.get("tokenizer", "tokenizer.json")))
    tok.no_padding()
    tok.no_truncation()
    truncating = Tokenizer.from_file(str(model / manifest.get("tokenizer", "tokenizer.json")))
    truncating.no_padding()
    truncating.enable_truncation(max_length=max_tokens)
    pad_token = manifest.get("pad_token")
    pad_id = next((tok.token_to_id(t) for t in [pad_token, "[PAD]", "<pad>"] if t and tok.token_to_id(t) is not None), 0)
    left = manifest.get("padding_side", "right") == "left"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(model / manifest.get("onnx", "model.onnx")), options, providers=providers)
    inputs = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    default = "sentence_embedding" if pooling == "output" else ("last_hidden_state" if "last_hidden_state" in outputs else outputs[0])
    output = manifest.get("output", default)

    def tokenize(texts: list[str]) -> list:
        # As duet: cut at max_tokens x 32 characters, then at max_tokens tokens (special tokens included).
        cut = [t[: max_tokens * CHARS_PER_TOKEN] for t in texts]
        encodings = tok.encode_batch(cut)
        return [truncating.encode(c) if len(e.ids) > max_tokens else e for c, e in zip(cut, encodings)]

    def encode(chunk: list) -> np.ndarray:
        n, seq = len(chunk), max(len(e.ids) for e in chunk)
        ids = np.full((n, seq), pad_id, dtype=np.int64)
        mask = np.zeros((n, seq), dtype=np.int64)
        types = np.zeros((n, seq), dtype=np.int64)
        for b, e in enumerate(chunk):
            at = slice(seq - len(e.ids), seq) if left else slice(0, len(e.ids))
            ids[b, at] = e.ids
            mask[b, at] = 1
            types[b, at] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = types
        pooled = pool(session.run([output], feed)[0], mask, pooling)
        if manifest.get("normalize", True):
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled

    encode(tokenize(framed[:batch]))
    started = time.perf_counter()
    encodings = tokenize(framed)
    for i in range(0, len(encodings), batch):
        encode(encodings[i : i + batch])
    seconds = time.perf_counter() - started
    tokens = [len(e.ids) for e in encodings]
    step = max(len(framed) // samples, 1)
    latencies = []
    for text in framed[::step][:samples]:
        started = time.perf_counter()
        encode(tokenize([text]))
        latencies.append((time.perf_counter() - started) * 1e3)
    p50, p90 = quantiles(latencies)
    return {"tokens": sum(tokens), "token_counts": tokens, "seconds": seconds, "tokens_per_second": sum(tokens) / seconds,
            "texts_per_second": len(framed) / seconds, "latency_ms_p50": p50, "latency_ms_p90": p90,
            "providers": session.get_providers()}


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
    p.add_argument("--limits", required=True, help="texts per model, space-separated, in model order")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--st-model", default="")
    p.add_argument("--out", default="")
    p.add_argument("models", nargs="+", type=Path)
    a = p.parse_args()
    limits = [int(n) for n in a.limits.split()]
    cores = os.cpu_count() or 1
    flop_limit = float(os.environ.get("BENCH_FLOP_TOKENS_PER_CORE", "4350")) * min(a.threads, cores)
    st = None
    rows = []
    for model, limit in zip(a.models, limits):
        name = model.name
        load = lambda k: json.loads(path.read_text()) if (path := a.scratch / f"{name}.{k}.json").is_file() else None
        duet = {k: load(k) for k in ("direct", "unsorted", "queue")}
        framed, duet_tokens = framed_of(a.scratch, name)
        print(f"bench-encode: {name}: raw ONNX Runtime, {len(framed)} texts", flush=True)
        samples = 32 if limit >= 100 else 8
        raw = raw_ort(model, framed, a.batch, a.threads, a.device, samples)
        if raw["token_counts"] != duet_tokens:
            differ = sum(x != y for x, y in zip(raw["token_counts"], duet_tokens))
            print(f"bench-encode: {name}: WARNING: {differ} texts tokenised differently by duet and Python", flush=True)
        st_row = {}
        if name == "minilm":
            if st is None:
                print("bench-encode: sentence-transformers (fp32)", flush=True)
                st = sentence_transformers(a.st_model, texts_of(a.corpus, limit), a.batch, a.threads, raw["tokens"]) or {}
            st_row = st
        direct, queue = duet["direct"], duet["queue"]
        best = max(direct["tokens_per_second"], queue["tokens_per_second"])
        best_docs = max(direct["texts_per_second"], queue["texts_per_second"])
        rows.append({
            "model": name,
            "texts": len(framed),
            "device": direct.get("device", "cpu"),
            "ort_providers": raw["providers"],
            "duet_direct_tokens_per_second": direct["tokens_per_second"],
            "duet_corpus_order_tokens_per_second": duet["unsorted"]["tokens_per_second"] if duet["unsorted"] else None,
            "duet_queue_tokens_per_second": queue["tokens_per_second"],
            "duet_texts_per_second": direct["texts_per_second"],
            "duet_queue_texts_per_second": queue["texts_per_second"],
            "duet_best_texts_per_second": best_docs,
            "duet_latency_ms_p50": direct["latency_ms_p50"],
            "ort_tokens_per_second": raw["tokens_per_second"],
            "ort_texts_per_second": raw["texts_per_second"],
            "ort_latency_ms_p50": raw["latency_ms_p50"],
            "st_tokens_per_second": st_row.get("tokens_per_second"),
            "duet_over_ort": direct["tokens_per_second"] / raw["tokens_per_second"],
            "duet_queue_over_ort": queue["tokens_per_second"] / raw["tokens_per_second"],
            "duet_best_over_ort": best / raw["tokens_per_second"],
            "duet_over_st": best / st_row["tokens_per_second"] if st_row else None,
            "share_of_flop_limit": best / flop_limit,
            "tokens": raw["tokens"],
            "mean_tokens": raw["tokens"] / len(framed),
        })
    report = {"date": datetime.date.today().isoformat(), "cores": cores, "threads": a.threads, "batch": a.batch,
              "device": a.device, "corpus": a.corpus.name, "flop_limit_tokens_per_second": flop_limit, "rows": rows}
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    lines = [
        f"Encoder: the first documents of {a.corpus.parent.name} (framed with each model's document prompt, sorted by "
        f"length), batch {a.batch}, {a.threads} threads, {cores} cores, device {a.device}, {report['date']} "
        f"(MiniLM's FLOP limit {flop_limit:,.0f} tokens/s)",
        "",
        "| model | texts (mean tokens) | duet direct docs/s (tok/s) | duet queue+bulk docs/s (tok/s) | raw ORT docs/s (tok/s) "
        "| duet direct / ORT | duet queue / ORT | duet corpus order tok/s | sentence-transformers tok/s | duet / ST | of FLOP limit "
        "| batch-1 p50 duet / ORT ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['texts']} ({r['mean_tokens']:.0f}) "
            f"| {r['duet_texts_per_second']:,.2f} ({r['duet_direct_tokens_per_second']:,.0f}) "
            f"| {r['duet_queue_texts_per_second']:,.2f} ({r['duet_queue_tokens_per_second']:,.0f}) "
            f"| {r['ort_texts_per_second']:,.2f} ({r['ort_tokens_per_second']:,.0f}) | {r['duet_over_ort']:.2f} | {r['duet_queue_over_ort']:.2f} "
            f"| {fmt(r['duet_corpus_order_tokens_per_second'], ',.0f')} | {fmt(r['st_tokens_per_second'], ',.0f')} "
            f"| {fmt(r['duet_over_st'], '.2f')} | {r['share_of_flop_limit']:.2f} "
            f"| {fmt(r['duet_latency_ms_p50'], '.1f')} / {r['ort_latency_ms_p50']:.1f} |"
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
