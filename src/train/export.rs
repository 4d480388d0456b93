//! Writes a trained tower as an ONNX graph (opset 17, IR version 8) with `onnx-rs`, no Python involved.
//!
//! Inputs `input_ids` and `attention_mask` (int64 `[batch, seq]`, right or left padding alike); output
//! `sentence_embedding` (float `[batch, dimension]`, L2-normalised). The graph is the trainer's forward pass on
//! padded input: Gather (from the token table with any n-gram features folded in) → token weights (the mask, or
//! term-frequency saturation counted with an `[seq, seq]` Equal) → weighted mean (or masked softmax attention) →
//! Gemm (Tanh between layers) → x / max(‖x‖, ε); with a lexical channel, a second Gather from the fixed lexical
//! table, the same weighted sum, normalised, and both parts scaled and concatenated.
//!
//! [`write_folder`] is the trainer's export stage: both towers, `tokenizer.json` and `model.toml` in the model
//! folder. It may use the towers ([`super::tower`]), the tokenizer's names and the settings; nothing is trained here.

use std::path::Path;

use onnx_rs::ast::{
    Attribute, AttributeType, DataType, Dimension, Graph, Model, Node, OpType, OperatorSetId, TensorProto, TensorShape,
    TensorShapeDimension, TensorTypeProto, TypeProto, TypeValue, ValueInfo,
};

use serde::Serialize;

use super::ops::NORM_EPS;
use super::tower::{Tower, TwoTower};
use super::{tokenizer, TrainConfig, TrainError};

/// ONNX IR version written (ONNX Runtime 1.31 reads up to 13).
pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;

fn value_info<'a>(name: &'a str, elem_type: DataType, dims: &[Dimension<'a>]) -> ValueInfo<'a> {
    ValueInfo {
        name,
        r#type: Some(TypeProto {
            value: Some(TypeValue::Tensor(TensorTypeProto {
                elem_type,
                shape: Some(TensorShape {
                    dim: dims.iter().map(|d| TensorShapeDimension { value: d.clone(), ..Default::default() }).collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node<'a>(op: OpType<'a>, inputs: &[&'a str], output: &'a str, attribute: Vec<Attribute<'a>>) -> Node<'a> {
    Node { name: output, op_type: op, input: inputs.to_vec(), output: vec![output], attribute, ..Default::default() }
}

fn int_attr(name: &str, value: i64) -> Attribute<'_> {
    Attribute { name, r#type: AttributeType::Int, i: value, ..Default::default() }
}

fn weights(var: &candle_core::Var) -> Result<(Vec<i64>, Vec<f32>), TrainError> {
    let t = var.as_tensor();
    let dims = t.dims().iter().map(|&d| d as i64).collect();
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Ok((dims, data))
}

const LAYER_NAMES: [(&str, &str, &str, &str); 2] = [
    ("layer0.weight", "layer0.bias", "layer0", "layer0.tanh"),
    ("layer1.weight", "layer1.bias", "layer1", "layer1.tanh"),
];

const NORM: [&str; 4] = ["squares", "sum_squares", "norm", "norm_eps"];
const LEXICAL_NORM: [&str; 4] = ["lexical.squares", "lexical.sum_squares", "lexical.norm", "lexical.norm_eps"];
const HYBRID_NORM: [&str; 4] = ["hybrid.squares", "hybrid.sum_squares", "hybrid.norm", "hybrid.norm_eps"];

/// The ONNX bytes of one tower.
pub fn tower_to_onnx(tower: &Tower, doc: &str) -> Result<Vec<u8>, TrainError> {
    if tower.layers.len() > LAYER_NAMES.len() {
        return Err(TrainError::Export(format!("at most {} layers can be exported", LAYER_NAMES.len())));
    }
    let mut initializer = Vec::new();
    let table = &tower.embedding;
    initializer.push(TensorProto::from_f32(
        "embedding",
        vec![table.vocab as i64, table.dim as i64],
        tower.folded_embedding()?,
    ));
    initializer.push(TensorProto::from_i64("axis1", vec![1], vec![1]));
    initializer.push(TensorProto::from_i64("axis2", vec![1], vec![2]));
    initializer.push(TensorProto::from_f32("one", vec![], vec![1.0]));
    initializer.push(TensorProto::from_f32("eps", vec![], vec![NORM_EPS as f32]));

    let mut nodes = vec![
        node(OpType::Gather, &["embedding", "input_ids"], "tokens", vec![int_attr("axis", 0)]),
        node(OpType::Cast, &["attention_mask"], "mask", vec![int_attr("to", 1)]),
        node(OpType::Unsqueeze, &["mask", "axis2"], "mask3", vec![]),
    ];
    // Token weights `[batch, seq, 1]`: the mask, or with term-frequency saturation c^(tf_power − 1) per token,
    // c its count in the text (Batch::tf_weights), 0 on padding.
    let token_weights = if tower.shape.tf_power == 1.0 {
        "mask3"
    } else {
        initializer.push(TensorProto::from_f32("tf.exponent", vec![], vec![(tower.shape.tf_power - 1.0) as f32]));
        nodes.extend([
            node(OpType::Unsqueeze, &["input_ids", "axis2"], "ids.column", vec![]),
            node(OpType::Unsqueeze, &["input_ids", "axis1"], "ids.row", vec![]),
            node(OpType::Equal, &["ids.column", "ids.row"], "same_token", vec![]),
            node(OpType::Cast, &["same_token"], "same_token.float", vec![int_attr("to", 1)]),
            node(OpType::Unsqueeze, &["mask", "axis1"], "mask.row", vec![]),
            node(OpType::Mul, &["same_token.float", "mask.row"], "same_token.masked", vec![]),
            node(OpType::ReduceSum, &["same_token.masked", "axis2"], "tf.count", vec![int_attr("keepdims", 1)]),
            node(OpType::Max, &["tf.count", "one"], "tf.count1", vec![]),
            node(OpType::Pow, &["tf.count1", "tf.exponent"], "tf.raw", vec![]),
            node(OpType::Mul, &["tf.raw", "mask3"], "tf", vec![]),
        ]);
        "tf"
    };
    match &tower.attention {
        None => nodes.extend([
            node(OpType::Mul, &["tokens", token_weights], "masked", vec![]),
            node(OpType::ReduceSum, &["masked", "axis1"], "summed", vec![int_attr("keepdims", 0)]),
            node(OpType::ReduceSum, &[token_weights, "axis1"], "count", vec![int_attr("keepdims", 0)]),
            node(OpType::Max, &["count", "one"], "count1", vec![]),
            node(OpType::Div, &["summed", "count1"], "pooled", vec![]),
        ]),
        Some(w) => {
            let (dims, data) = weights(w)?;
            initializer.push(TensorProto::from_f32("attention.weight", dims, data));
            initializer.push(TensorProto::from_f32("big", vec![], vec![1e9]));
            nodes.extend([
                node(OpType::MatMul, &["tokens", "attention.weight"], "scores", vec![]),
                // 0 for tokens, -1e9 for padding.
                node(OpType::Sub, &["mask3", "one"], "mask_minus_one", vec![]),
                node(OpType::Mul, &["mask_minus_one", "big"], "penalty", vec![]),
                node(OpType::Add, &["scores", "penalty"], "masked_scores", vec![]),
            ]);
            let softmax_input = if token_weights == "tf" {
                // softmax(s + ln w) weighs each token's exp(s) by its term-frequency weight, as in training.
                nodes.extend([
                    node(OpType::Log, &["tf.raw"], "tf.log", vec![]),
                    node(OpType::Add, &["masked_scores", "tf.log"], "weighted_scores", vec![]),
                ]);
                "weighted_scores"
            } else {
                "masked_scores"
            };
            nodes.extend([
                node(OpType::Softmax, &[softmax_input], "softmax", vec![int_attr("axis", 1)]),
                // An all-padding row (an empty text) pools to zero, as in training.
                node(OpType::Mul, &["softmax", "mask3"], "weights", vec![]),
                node(OpType::Mul, &["tokens", "weights"], "weighted", vec![]),
                node(OpType::ReduceSum, &["weighted", "axis1"], "pooled", vec![int_attr("keepdims", 0)]),
            ]);
        }
    }
    let mut current = "pooled";
    let last = tower.layers.len() - 1;
    for (i, (w, b)) in tower.layers.iter().enumerate() {
        let (w_name, b_name, out, tanh) = LAYER_NAMES[i];
        let (dims, data) = weights(w)?;
        initializer.push(TensorProto::from_f32(w_name, dims, data));
        let (dims, data) = weights(b)?;
        initializer.push(TensorProto::from_f32(b_name, dims, data));
        nodes.push(node(OpType::Gemm, &[current, w_name, b_name], out, vec![int_attr("transB", 1)]));
        current = out;
        if i < last {
            nodes.push(node(OpType::Tanh, &[current], tanh, vec![]));
            current = tanh;
        }
    }
    match &tower.lexical {
        None => nodes.extend(normalise(current, NORM, "sentence_embedding")),
        Some(lexical) => {
            initializer.push(TensorProto::from_f32(
                "lexical",
                vec![table.vocab as i64, lexical.dim as i64],
                lexical.table.as_ref().clone(),
            ));
            initializer.push(TensorProto::from_f32(
                "learned.scale",
                vec![],
                vec![(1.0 - lexical.weight).sqrt() as f32],
            ));
            initializer.push(TensorProto::from_f32("lexical.scale", vec![], vec![lexical.weight.sqrt() as f32]));
            nodes.extend(normalise(current, NORM, "learned"));
            nodes.extend([
                node(OpType::Mul, &["learned", "learned.scale"], "learned.scaled", vec![]),
                node(OpType::Gather, &["lexical", "input_ids"], "lexical.tokens", vec![int_attr("axis", 0)]),
                node(OpType::Mul, &["lexical.tokens", token_weights], "lexical.masked", vec![]),
                node(OpType::ReduceSum, &["lexical.masked", "axis1"], "lexical.pooled", vec![int_attr("keepdims", 0)]),
            ]);
            nodes.extend(normalise("lexical.pooled", LEXICAL_NORM, "lexical.unit"));
            nodes.extend([
                node(OpType::Mul, &["lexical.unit", "lexical.scale"], "lexical.scaled", vec![]),
                node(OpType::Concat, &["learned.scaled", "lexical.scaled"], "hybrid", vec![int_attr("axis", 1)]),
            ]);
            // Unit length already, but for an empty text (no lexical part).
            nodes.extend(normalise("hybrid", HYBRID_NORM, "sentence_embedding"));
        }
    }

    let batch_seq = [Dimension::Param("batch"), Dimension::Param("sequence")];
    let model = Model {
        ir_version: IR_VERSION,
        producer_name: "duet-train",
        producer_version: env!("CARGO_PKG_VERSION"),
        doc_string: doc,
        opset_import: vec![OperatorSetId { domain: "", version: OPSET }],
        graph: Some(Graph {
            name: "tower",
            node: nodes,
            initializer,
            input: vec![
                value_info("input_ids", DataType::Int64, &batch_seq),
                value_info("attention_mask", DataType::Int64, &batch_seq),
            ],
            output: vec![value_info(
                "sentence_embedding",
                DataType::Float,
                &[Dimension::Param("batch"), Dimension::Value(tower.output_dim() as i64)],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(onnx_rs::encode(&model))
}

/// `output` = `input` / max(‖input‖, ε) per row, through the intermediate values `names`.
fn normalise<'a>(input: &'a str, names: [&'a str; 4], output: &'a str) -> Vec<Node<'a>> {
    let [squares, sum, norm, norm_eps] = names;
    vec![
        node(OpType::Mul, &[input, input], squares, vec![]),
        node(OpType::ReduceSum, &[squares, "axis1"], sum, vec![int_attr("keepdims", 1)]),
        node(OpType::Sqrt, &[sum], norm, vec![]),
        node(OpType::Max, &[norm, "eps"], norm_eps, vec![]),
        node(OpType::Div, &[input, norm_eps], output, vec![]),
    ]
}

/// Writes `bytes` to `path`.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    Ok(crate::util::fs::write(path, bytes)?)
}

/// Writes the model folder `duet serve` loads: `query.onnx` and `document.onnx` (the same graph with shared
/// towers), `tokenizer.json`, and `model.toml` named `name`.
pub fn write_folder(
    out: &Path,
    name: &str,
    config: &TrainConfig,
    model: &TwoTower,
    tok: &tokenizers::Tokenizer,
) -> Result<(), TrainError> {
    crate::util::fs::create_dir_all(out)?;
    let doc =
        if config.shared_towers { "duet two-tower model: shared tower" } else { "duet two-tower model: {} tower" };
    write(&out.join("query.onnx"), &tower_to_onnx(&model.query, &doc.replace("{}", "query"))?)?;
    write(&out.join("document.onnx"), &tower_to_onnx(model.document_tower(), &doc.replace("{}", "document"))?)?;
    let tokenizer_path = out.join("tokenizer.json");
    tok.save(&tokenizer_path, false).map_err(|source| TrainError::Tokenizer {
        message: format!("cannot write {}", tokenizer_path.display()),
        source: Some(source),
    })?;
    write_manifest(out, name, config)
}

/// `model.toml` as `duet serve` reads it.
#[derive(Serialize)]
struct ManifestOut<'a> {
    name: &'a str,
    kind: &'static str,
    role: &'static str,
    dimension: usize,
    pooling: &'static str,
    output: &'static str,
    normalize: bool,
    max_tokens: usize,
    pad_token: &'static str,
    query_onnx: &'static str,
    document_onnx: &'static str,
    tokenizer: &'static str,
}

fn write_manifest(out: &Path, name: &str, config: &TrainConfig) -> Result<(), TrainError> {
    let manifest = ManifestOut {
        name,
        kind: "two-tower",
        role: "two-tower",
        dimension: config.output_dim + config.lexical_dim,
        pooling: "output",
        output: "sentence_embedding",
        normalize: true,
        max_tokens: config.max_tokens,
        pad_token: tokenizer::PAD_TOKEN,
        query_onnx: "query.onnx",
        document_onnx: "document.onnx",
        tokenizer: "tokenizer.json",
    };
    let text =
        format!("# Written by `duet train`; the hyper-parameters are in report.json.\n{}", toml::to_string(&manifest)?);
    let path = out.join("model.toml");
    Ok(crate::util::fs::write(&path, text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tower::{TowerPooling, TowerShape};
    use crate::util::rng::Rng;

    #[test]
    fn the_graph_parses_back_with_the_serving_names() {
        for (pooling, hidden) in [(TowerPooling::Mean, 0), (TowerPooling::Attention, 5)] {
            let shape =
                TowerShape { vocab: 10, embedding: 4, hidden, output: 3, pooling, ngram_buckets: 0, tf_power: 1.0 };
            let tower = Tower::new(shape, None, None, &mut Rng::new(2), &candle_core::Device::Cpu).unwrap();
            let bytes = tower_to_onnx(&tower, "test").unwrap();
            let model = onnx_rs::parse(&bytes).unwrap();
            assert_eq!(model.ir_version, IR_VERSION);
            let graph = model.graph.unwrap();
            let inputs: Vec<&str> = graph.input.iter().map(|i| i.name).collect();
            assert_eq!(inputs, ["input_ids", "attention_mask"]);
            assert_eq!(graph.output[0].name, "sentence_embedding");
            assert_eq!(graph.node.iter().filter(|n| n.op_type == OpType::Gemm).count(), tower.layers.len());
        }
    }
}
