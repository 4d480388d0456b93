#!/usr/bin/env python3
"""Build the tiny ONNX models and tokenizers that Duet's tests and example config serve.

They are real ONNX graphs with the same inputs and outputs as the real models (so every code path of the
serving pipeline runs), but with a few KB of seeded random weights instead of hundreds of MB:

- models/tiny-encoder: BERT-shaped encoder (input_ids, attention_mask, token_type_ids -> last_hidden_state),
  hidden = tanh(E[ids] + T[type_ids]) * mask. Mean pooling in Duet.
- models/tiny-llm: decoder-shaped network (input_ids, attention_mask -> last_hidden_state) whose state at
  position t is the causal running sum of E[ids] * mask up to t, so last-token pooling sees the whole text.
  Its tokenizer adds no special tokens and pads with "<|im_end|>" (id 2), like SmolLM2.
- models/tiny-two-tower: query.onnx and document.onnx, different towers that emit a sentence vector
  ("sentence_embedding", pooling `output`): masked mean of E[ids] times W, plus a bias in the document tower.
- models/tiny-encoder-v2: tiny-encoder re-seeded (same name, tokenizer and shape, other weights): a new version
  of the same model, for the tests that replace and roll back a model at run time.
- models/tiny-encoder-int8: tiny-encoder dynamically quantised by models/quantize.py's `quantize()` (per-channel
  int8; its embedding table, as it has no MatMul), with `quantized_from = "../tiny-encoder"`; and
  tests/fixtures/tiny-encoder-int8-perturbed, the same from deliberately perturbed weights: `duet verify` must
  accept the first and reject the second.

It also writes tests/fixtures/expected_vectors.json: pooled vectors computed here with numpy, from an
independent re-implementation of tokenization and pooling, that the Rust tests compare against.

The shipped tokenizer.json files deliberately bake in `Fixed(16)` padding and truncation at 8 tokens, as real
tokenizer.json files bake in 128: Duet must override both.

Usage: .venv/bin/python scripts/make_tiny_models.py   (needs `onnx`, `numpy` and `onnxruntime`, see
scripts/requirements-dev.txt)
"""
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
DIM = 32
SEED = 20261126
OPSET = 17
WORD_RE = re.compile(r"\w+|[^\w\s]+")

# Words beyond the example corpus, used by tests and demo queries.
EXTRA_WORDS = """
how do i what is the best way to quickly fast slow get set make new old big small python shell book novel code
function method class file files list lists string strings number numbers sort sorted search find query result
results document documents model models hello world ünïcödé café naïve résumé
""".split()


def words(text):
    return WORD_RE.findall(text.lower())


def build_vocab():
    vocab_words = set(EXTRA_WORDS)
    for line in (ROOT / "examples" / "corpus.jsonl").read_text().splitlines():
        if line.strip():
            vocab_words.update(words(json.loads(line)["text"]))
    return sorted(vocab_words)


def tokenizer_json(vocab, specials, template, pad_token, pad_id):
    """A WordLevel tokenizer.json in the format of the `tokenizers` library, with baked-in padding/truncation."""
    post = None
    if template:
        cls, sep = template
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": cls, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": sep, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": cls, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": sep, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": sep, "type_id": 1}}],
            "special_tokens": {t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in (cls, sep)},
        }
    return {
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": None,
                    "pad_id": pad_id, "pad_type_id": 0, "pad_token": pad_token},
        "added_tokens": [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t in specials],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": post,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": specials[1] if template else "<unk>"},
    }


def ids_for(text, vocab, unk, cls=None, sep=None, max_tokens=None):
    ids = [vocab.get(w, vocab[unk]) for w in words(text)]
    budget = None if max_tokens is None else max_tokens - (2 if cls else 0)
    truncated = budget is not None and len(ids) > budget
    if truncated:
        ids = ids[:budget]
    if cls:
        ids = [vocab[cls]] + ids + [vocab[sep]]
    return ids, truncated


def save(model, path):
    model.ir_version = 10  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 writes 14 by default
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def int_input(name):
    return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])


def build_encoder(out, vocab, rng):
    emb = rng.normal(0, 1, (len(vocab), DIM)).astype(np.float32)
    types = rng.normal(0, 0.1, (2, DIM)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["typ"]),
        helper.make_node("Add", ["tok", "typ"], ["sum"]),
        helper.make_node("Tanh", ["sum"], ["act"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["act", "mask3"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [int_input("input_ids"), int_input("attention_mask"), int_input("token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", DIM])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(types, "types"),
         numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="duet"), out)
    return emb, types


def build_llm(out, vocab, rng):
    emb = rng.normal(0, 1, (len(vocab), DIM)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("CumSum", ["masked", "axis_seq"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_llm", [int_input("input_ids"), int_input("attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", DIM])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
         numpy_helper.from_array(np.array(1, dtype=np.int64), "axis_seq")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="duet"), out)
    return emb


def build_tower(out, name, emb, weight, bias):
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_seq"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis_seq"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["mean"]),
        helper.make_node("MatMul", ["mean", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["sentence_embedding"]),
    ]
    graph = helper.make_graph(
        nodes, name, [int_input("input_ids"), int_input("attention_mask")],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", DIM])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(weight, "weight"),
         numpy_helper.from_array(bias, "bias"), numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
         numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_seq")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="duet"), out)


def write_json(path, value):
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def main():
    rng = np.random.default_rng(SEED)
    words_list = build_vocab()

    bert_specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    bert_vocab = {t: i for i, t in enumerate(bert_specials + words_list)}
    llm_specials = ["<|endoftext|>", "<unk>", "<|im_end|>"]
    llm_vocab = {t: i for i, t in enumerate(llm_specials + words_list)}

    enc_dir, llm_dir, tt_dir = (ROOT / "models" / n for n in ("tiny-encoder", "tiny-llm", "tiny-two-tower"))
    emb, types = build_encoder(enc_dir / "model.onnx", bert_vocab, rng)
    write_json(enc_dir / "tokenizer.json",
               tokenizer_json(bert_vocab, bert_specials, ("[CLS]", "[SEP]"), "[PAD]", 0))
    llm_emb = build_llm(llm_dir / "model.onnx", llm_vocab, rng)
    write_json(llm_dir / "tokenizer.json", tokenizer_json(llm_vocab, llm_specials, None, "<|im_end|>", 2))

    tt_emb = rng.normal(0, 1, (len(llm_vocab), DIM)).astype(np.float32)
    weight, _ = np.linalg.qr(rng.normal(0, 1, (DIM, DIM)))
    weight = weight.astype(np.float32)
    doc_bias = rng.normal(0, 0.05, (DIM,)).astype(np.float32)
    build_tower(tt_dir / "query.onnx", "tiny_query_tower", tt_emb, weight, np.zeros(DIM, dtype=np.float32))
    build_tower(tt_dir / "document.onnx", "tiny_document_tower", tt_emb, weight, doc_bias)
    write_json(tt_dir / "tokenizer.json", tokenizer_json(llm_vocab, llm_specials, None, "<|im_end|>", 2))

    # Reference vectors, computed independently of Duet (numpy, unnormalised, before Duet's L2 step).
    texts = [
        "sort a list of numbers",
        "Hello",
        "café naïve résumé ünïcödé",
        "an unknownword, with punctuation!",
        " ".join(["read a json file from disk and parse it into a dictionary"] * 3),
    ]
    cases = []
    for text in texts:
        for max_tokens in (None, 6):
            ids, trunc = ids_for(text, bert_vocab, "[UNK]", "[CLS]", "[SEP]", max_tokens)
            hidden = np.tanh(emb[ids] + types[0])
            cases.append({"model": "encoder", "pooling": "mean", "max_tokens": max_tokens, "text": text,
                          "truncated": trunc, "vector": hidden.mean(0).tolist()})
            cases.append({"model": "encoder", "pooling": "cls", "max_tokens": max_tokens, "text": text,
                          "truncated": trunc, "vector": hidden[0].tolist()})
            ids, trunc = ids_for(text, llm_vocab, "<unk>", max_tokens=max_tokens)
            states = np.cumsum(llm_emb[ids], axis=0)
            cases.append({"model": "llm", "pooling": "last-token", "max_tokens": max_tokens, "text": text,
                          "truncated": trunc, "vector": states[-1].tolist()})
            cases.append({"model": "llm", "pooling": "mean", "max_tokens": max_tokens, "text": text,
                          "truncated": trunc, "vector": states.mean(0).tolist()})
            mean = tt_emb[ids].mean(0)
            cases.append({"model": "two-tower-query", "pooling": "output", "max_tokens": max_tokens, "text": text,
                          "truncated": trunc, "vector": (mean @ weight).tolist()})
            cases.append({"model": "two-tower-document", "pooling": "output", "max_tokens": max_tokens,
                          "text": text, "truncated": trunc, "vector": (mean @ weight + doc_bias).tolist()})
    write_json(ROOT / "tests" / "fixtures" / "expected_vectors.json", {"dimension": DIM, "cases": cases})

    # A second version of tiny-encoder, from its own generator so that the models above do not change.
    v2_dir = ROOT / "models" / "tiny-encoder-v2"
    build_encoder(v2_dir / "model.onnx", bert_vocab, np.random.default_rng(SEED + 1))
    write_json(v2_dir / "tokenizer.json",
               tokenizer_json(bert_vocab, bert_specials, ("[CLS]", "[SEP]"), "[PAD]", 0))
    manifest = (enc_dir / "model.toml").read_text()
    (v2_dir / "model.toml").write_text(manifest.replace(
        "# A BERT-shaped encoder", "# Version 2 of tiny-encoder (re-seeded weights). A BERT-shaped encoder", 1))
    build_int8_variants(enc_dir)
    print(f"wrote tiny models (vocab {len(words_list)} words, dim {DIM}) and {len(cases)} reference vectors")


VERIFY_TEXTS = [
    "sort a list of numbers",
    "Hello",
    "café naïve résumé ünïcödé",
    "an unknownword, with punctuation!",
    "how do i read a json file from disk and parse it into a dictionary quickly",
    " ".join(["find the best way to search documents and sort the results by score"] * 6),
]


def build_int8_variants(enc_dir):
    """tiny-encoder quantised as the real models are (models/quantize.py), faithfully and from perturbed weights."""
    sys.path.insert(0, str(ROOT / "models"))
    from dataclasses import replace

    from quantize import VARIANTS, quantize, variant_manifest

    # The settings of the real MiniLM variant (the tiny graph's only weights are its embedding tables).
    variant = replace(VARIANTS[0], name="tiny-encoder-int8", source="tiny-encoder")
    int8_dir = ROOT / "models" / variant.name
    int8_dir.mkdir(parents=True, exist_ok=True)
    quantize(enc_dir / "model.onnx", int8_dir / "model.onnx", variant.weight_type, variant.op_types,
             variant.per_channel, variant.keep_down_projections)
    save(onnx.load(str(int8_dir / "model.onnx")), int8_dir / "model.onnx")
    (int8_dir / "tokenizer.json").write_bytes((enc_dir / "tokenizer.json").read_bytes())
    manifest = variant_manifest((enc_dir / "model.toml").read_text(), variant, "scripts/make_tiny_models.py")
    (int8_dir / "model.toml").write_text(manifest)
    # The texts `duet verify` encodes with both models (the fp32 model gives the expected vectors).
    write_json(int8_dir / "reference.json", {"side": "document", "texts": VERIFY_TEXTS})

    # The unfaithful one: the embedding table moved by noise of 0.6 times its own scale, then quantised the same way.
    bad_dir = ROOT / "tests" / "fixtures" / "tiny-encoder-int8-perturbed"
    bad_dir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(enc_dir / "model.onnx"))
    rng = np.random.default_rng(SEED + 8)
    for init in model.graph.initializer:
        if init.name == "emb":
            emb = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(
                (emb + rng.normal(0, 0.6, emb.shape)).astype(np.float32), "emb"))
    with tempfile.TemporaryDirectory() as tmp:
        perturbed = Path(tmp) / "perturbed.onnx"
        save(model, perturbed)
        quantize(perturbed, bad_dir / "model.onnx", variant.weight_type, variant.op_types, variant.per_channel,
                 variant.keep_down_projections)
    save(onnx.load(str(bad_dir / "model.onnx")), bad_dir / "model.onnx")
    bad = variant_manifest((enc_dir / "model.toml").read_text(), replace(variant, name="tiny-encoder-int8-perturbed"),
                           "scripts/make_tiny_models.py")
    bad = bad.replace('tokenizer = "tokenizer.json"', 'tokenizer = "../../../models/tiny-encoder/tokenizer.json"')
    bad = bad.replace('quantized_from = "../tiny-encoder"', 'quantized_from = "../../../models/tiny-encoder"')
    write_json(bad_dir / "reference.json", {"side": "document", "texts": VERIFY_TEXTS})
    (bad_dir / "model.toml").write_text(
        "# Deliberately unfaithful: quantised from perturbed weights (tests/verify.rs expects `duet verify` to fail).\n"
        + bad)


if __name__ == "__main__":
    main()
