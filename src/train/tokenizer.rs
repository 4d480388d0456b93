//! The two-tower tokenizer: BPE trained on the corpus and the training queries, with a normaliser and
//! pre-tokenizer that split code identifiers into words.
//!
//! Everything lives in `tokenizer.json`, so the serving path (`Tokenizer::from_file`) applies exactly the same
//! steps: a `Replace` per capital letter that follows a lower-case letter or a digit inserts a space there
//! (`parseHttpHeader` → `parse http header`), then `Lowercase`; the pre-tokenizer splits on anything that is not
//! a letter or a digit (`snake_case`, dots, brackets; punctuation is dropped unless asked to be kept as tokens) and
//! between digits and letters. BPE training is deterministic (WordPiece training was not, on this stack).

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::TrainError;

/// Padding token, id 0: named in the manifest's `pad_token`.
pub const PAD_TOKEN: &str = "[PAD]";
/// Unknown-character token, id 1.
pub const UNK_TOKEN: &str = "[UNK]";

/// Tokenizer settings.
#[derive(Debug, Clone)]
pub struct TokenizerOptions {
    /// Vocabulary size, special tokens and the alphabet included.
    pub vocab_size: usize,
    /// Pairs of symbols seen fewer times are not merged.
    pub min_frequency: u64,
    /// Keep punctuation characters as tokens of their own (otherwise they only separate words).
    pub keep_punctuation: bool,
    /// Most distinct characters kept in the alphabet (rarer ones become `[UNK]`).
    pub limit_alphabet: usize,
}

fn err(source: tokenizers::Error) -> TrainError {
    TrainError::Tokenizer { message: "the tokenizers library failed".into(), source: Some(source) }
}

/// An untrained tokenizer with Duet's normaliser and pre-tokenizer around an empty BPE model.
pub fn empty(options: &TokenizerOptions) -> Result<Tokenizer, TrainError> {
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    for upper in 'A'..='Z' {
        // `fooBar` → `foo Bar`, `utf8Decode` → `utf8 Decode`; runs of capitals (`HTTPServer`) stay together.
        let pattern = format!("(?<=[a-z0-9]){upper}");
        let replace =
            Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(pattern), format!(" {upper}"))
                .map_err(err)?;
        normalizers.push(replace.into());
    }
    normalizers.push(Lowercase.into());
    let punctuation = if options.keep_punctuation {
        vec![
            Split::new(SplitPattern::Regex(r"\s+".into()), SplitDelimiterBehavior::Removed, false).map_err(err)?,
            Split::new(SplitPattern::Regex(r"[^\p{L}\p{N}\s]".into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(err)?,
        ]
    } else {
        vec![Split::new(SplitPattern::Regex(r"[^\p{L}\p{N}]+".into()), SplitDelimiterBehavior::Removed, false)
            .map_err(err)?]
    };
    let mut pre: Vec<PreTokenizerWrapper> = punctuation.into_iter().map(Into::into).collect();
    pre.push(Digits::new(false).into());

    let bpe = BPE::builder().unk_token(UNK_TOKEN.to_string()).build().map_err(err)?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers))).map_err(err)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(pre)));
    Ok(tokenizer)
}

/// Trains the tokenizer on `texts` (corpus documents and training queries).
pub fn train<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    options: &TokenizerOptions,
) -> Result<Tokenizer, TrainError> {
    if options.vocab_size < 64 {
        return Err(TrainError::Config("vocab_size must be at least 64".into()));
    }
    let mut tokenizer = empty(options)?;
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(options.vocab_size)
        .min_frequency(options.min_frequency)
        .show_progress(false)
        .limit_alphabet(options.limit_alphabet)
        .special_tokens(vec![AddedToken::from(PAD_TOKEN, true), AddedToken::from(UNK_TOKEN, true)])
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer.train(&mut trainer, texts).map_err(err)?;
    if tokenizer.token_to_id(PAD_TOKEN) != Some(0) {
        return Err(TrainError::Tokenizer { message: format!("{PAD_TOKEN} did not get id 0"), source: None });
    }
    Ok(tokenizer)
}

/// Token ids of each text, cut at `max_tokens` (the serving path cuts at the manifest's `max_tokens` too).
pub fn encode_all(tokenizer: &Tokenizer, texts: &[&str], max_tokens: usize) -> Result<Vec<Vec<u32>>, TrainError> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(4096) {
        let encodings = tokenizer.encode_batch(chunk.to_vec(), false).map_err(err)?;
        out.extend(encodings.into_iter().map(|e| {
            let ids = e.get_ids();
            ids[..ids.len().min(max_tokens)].to_vec()
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> TokenizerOptions {
        TokenizerOptions { vocab_size: 200, min_frequency: 1, keep_punctuation: false, limit_alphabet: 100 }
    }

    fn words(tokenizer: &Tokenizer, text: &str) -> Vec<String> {
        let normalized = tokenizer.get_normalizer().unwrap();
        let mut s = tokenizers::NormalizedString::from(text);
        tokenizers::Normalizer::normalize(normalized, &mut s).unwrap();
        let mut pre = tokenizers::PreTokenizedString::from(s);
        tokenizers::PreTokenizer::pre_tokenize(tokenizer.get_pre_tokenizer().unwrap(), &mut pre).unwrap();
        pre.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Byte)
            .into_iter()
            .map(|(w, _, _)| w.to_string())
            .collect()
    }

    #[test]
    fn identifiers_split_into_lower_case_words() {
        let t = empty(&options()).unwrap();
        assert_eq!(words(&t, "parseHttpHeader"), ["parse", "http", "header"]);
        assert_eq!(words(&t, "read_file_2bytes(path)"), ["read", "file", "2", "bytes", "path"]);
        assert_eq!(words(&t, "HTTPServer.getURL"), ["httpserver", "get", "url"]);
        assert_eq!(words(&t, "os.path.join(a, b)"), ["os", "path", "join", "a", "b"]);
        let kept = empty(&TokenizerOptions { keep_punctuation: true, ..options() }).unwrap();
        assert_eq!(words(&kept, "f(x_y)"), ["f", "(", "x", "_", "y", ")"]);
    }

    #[test]
    fn training_is_deterministic_and_the_file_round_trips() {
        let texts: Vec<String> =
            (0..300).map(|i| format!("def readFile{i}(path): return open_file(path).readLines() # line {i}")).collect();
        let a = train(texts.iter().map(String::as_str), &options()).unwrap();
        let b = train(texts.iter().map(String::as_str), &options()).unwrap();
        assert_eq!(a.to_string(false).unwrap(), b.to_string(false).unwrap());
        assert_eq!(a.token_to_id(PAD_TOKEN), Some(0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        a.save(&path, false).unwrap();
        let loaded = Tokenizer::from_file(&path).unwrap();
        let text = "readLines from a fileHandle";
        assert_eq!(loaded.encode(text, false).unwrap().get_ids(), a.encode(text, false).unwrap().get_ids());
        let ids = encode_all(&a, &["readFile readLines", ""], 2).unwrap();
        assert_eq!(ids[0].len(), 2);
        assert!(ids[1].is_empty());
    }
}
