//! Lexical matching, a leaf that `eval` (the BM25 baseline every table carries) and `train` (BM25 hard negatives)
//! both use; it uses nothing of Duet's. A small in-memory inverted index over a (sampled) corpus. Tokens are
//! lower-cased alphanumeric runs, with identifiers split at camelCase and snake_case boundaries
//! (`parseHTTPResponse_v2` → `parse http response v2`), so code and prose share words. Okapi BM25 with k1 0.9, b 0.4 and Lucene's non-negative idf, ln(1 + (N − df + 0.5) / (df + 0.5)).

use std::collections::HashMap;

/// BM25 parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    pub k1: f64,
    pub b: f64,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Self { k1: 0.9, b: 0.4 }
    }
}

/// Splits text into lower-cased alphanumeric tokens, cutting identifiers at camelCase boundaries (`getValue` →
/// `get value`, `HTTPResponse` → `http response`); any other character (`_`, `.`, spaces) separates tokens.
/// Digits stay with the letters before them (`utf8`, `v2`).
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for run in text.split(|c: char| !c.is_alphanumeric()).filter(|r| !r.is_empty()) {
        let chars: Vec<char> = run.chars().collect();
        let mut start = 0;
        for i in 1..chars.len() {
            let (prev, cur) = (chars[i - 1], chars[i]);
            let next_lower = chars.get(i + 1).is_some_and(|c| c.is_lowercase());
            // lower→Upper (getValue), digit→Upper (utf8Decode), and the last capital of an acronym before a
            // lower-case letter (HTTPResponse: the R starts a word).
            let boundary =
                cur.is_uppercase() && (prev.is_lowercase() || prev.is_numeric() || (prev.is_uppercase() && next_lower));
            if boundary {
                out.push(chars[start..i].iter().collect::<String>().to_lowercase());
                start = i;
            }
        }
        out.push(chars[start..].iter().collect::<String>().to_lowercase());
    }
    out
}

/// An inverted index over a fixed set of documents.
pub struct Bm25Index {
    params: Bm25Params,
    ids: Vec<String>,
    terms: HashMap<String, u32>,
    /// Per term: (document, term frequency).
    postings: Vec<Vec<(u32, u32)>>,
    lengths: Vec<u32>,
    average_length: f64,
}

impl Bm25Index {
    /// Indexes `(id, text)` documents.
    pub fn build<'a>(documents: impl IntoIterator<Item = (&'a str, &'a str)>, params: Bm25Params) -> Self {
        let mut index = Self {
            params,
            ids: Vec::new(),
            terms: HashMap::new(),
            postings: Vec::new(),
            lengths: Vec::new(),
            average_length: 0.0,
        };
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for (id, text) in documents {
            let doc = index.ids.len() as u32;
            index.ids.push(id.to_string());
            counts.clear();
            let tokens = tokenize(text);
            index.lengths.push(tokens.len() as u32);
            for token in tokens {
                let next = index.terms.len() as u32;
                let term = *index.terms.entry(token).or_insert(next);
                if term as usize == index.postings.len() {
                    index.postings.push(Vec::new());
                }
                *counts.entry(term).or_default() += 1;
            }
            let mut sorted: Vec<(u32, u32)> = counts.iter().map(|(t, c)| (*t, *c)).collect();
            sorted.sort_unstable();
            for (term, tf) in sorted {
                index.postings[term as usize].push((doc, tf));
            }
        }
        let total: u64 = index.lengths.iter().map(|l| *l as u64).sum();
        index.average_length = if index.ids.is_empty() { 0.0 } else { total as f64 / index.ids.len() as f64 };
        index
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Inverse document frequency of a term (0 for an unknown term).
    pub fn idf(&self, term: &str) -> f64 {
        let Some(&t) = self.terms.get(term) else { return 0.0 };
        let n = self.ids.len() as f64;
        let df = self.postings[t as usize].len() as f64;
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    /// Rough bytes held: postings (8 bytes each), document lengths, ids and the vocabulary.
    pub fn memory_bytes(&self) -> usize {
        let postings: usize = self.postings.iter().map(|p| p.len() * 8).sum();
        let ids: usize = self.ids.iter().map(|i| i.len() + 24).sum();
        let terms: usize = self.terms.keys().map(|t| t.len() + 24 + 4).sum();
        postings + self.lengths.len() * 4 + ids + terms
    }

    /// The `k` best documents for a query, best first (documents sharing no term with the query are left out).
    /// Each distinct query token counts once (a repeated word in a query is not weighted up).
    pub fn search(&self, query: &str, k: usize) -> Vec<(String, f32)> {
        let (k1, b) = (self.params.k1, self.params.b);
        let mut scores = vec![0.0f64; self.ids.len()];
        let mut tokens = tokenize(query);
        tokens.sort_unstable();
        tokens.dedup();
        for token in tokens {
            let Some(&t) = self.terms.get(&token) else { continue };
            let idf = self.idf(&token);
            for &(doc, tf) in &self.postings[t as usize] {
                let tf = tf as f64;
                let length = self.lengths[doc as usize] as f64 / self.average_length.max(f64::MIN_POSITIVE);
                scores[doc as usize] += idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * length));
            }
        }
        let mut ranked: Vec<(u32, f64)> =
            scores.into_iter().enumerate().filter(|(_, s)| *s > 0.0).map(|(d, s)| (d as u32, s)).collect();
        let by_score = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if ranked.len() > k {
            ranked.select_nth_unstable_by(k, by_score);
            ranked.truncate(k);
        }
        ranked.sort_by(by_score);
        ranked.into_iter().map(|(d, s)| (self.ids[d as usize].clone(), s as f32)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_split_at_case_and_underscores() {
        assert_eq!(
            tokenize("def parseHTTPResponse_v2(self, getValue): utf8Decode x.y"),
            ["def", "parse", "http", "response", "v2", "self", "get", "value", "utf8", "decode", "x", "y"]
        );
        assert_eq!(tokenize("List ALL files, recursively!"), ["list", "all", "files", "recursively"]);
        assert_eq!(tokenize("  --  "), Vec::<String>::new());
    }

    #[test]
    fn scores_match_a_hand_worked_example() {
        // N = 3, lengths 3, 2, 4 (average 3); df(cat) = df(dog) = 2, so idf = ln(1 + 1.5 / 2.5) = ln 1.6.
        let docs = [("d1", "the cat sat"), ("d2", "the dog"), ("d3", "cat cat dog runs")];
        let index = Bm25Index::build(docs, Bm25Params::default());
        let idf = 1.6f64.ln();
        assert!((index.idf("cat") - idf).abs() < 1e-12);
        assert_eq!(index.idf("unicorn"), 0.0);
        // d1: tf 1, length 3 = average: 1 × 1.9 / (1 + 0.9) = 1 → idf.
        // d3: tf 2, length 4: K = 0.9 × (0.6 + 0.4 × 4/3) = 1.02; 2 × 1.9 / 3.02.
        let hits = index.search("cat", 10);
        assert_eq!(hits.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(), ["d3", "d1"], "d2 has no cat");
        assert!((hits[0].1 as f64 - idf * 3.8 / 3.02).abs() < 1e-6);
        assert!((hits[1].1 as f64 - idf).abs() < 1e-6);
        // Two terms add up: d3 = idf × (3.8 / 3.02 + 1.9 / 2.02); d2: K = 0.9 × (0.6 + 0.4 × 2/3) = 0.78.
        let hits = index.search("Cat DOG", 10);
        assert_eq!(hits[0].0, "d3");
        assert!((hits[0].1 as f64 - idf * (3.8 / 3.02 + 1.9 / 2.02)).abs() < 1e-6);
        assert_eq!(hits[1].0, "d2");
        assert!((hits[1].1 as f64 - idf * 1.9 / 1.78).abs() < 1e-6);
        assert_eq!(hits[2].0, "d1");
        assert_eq!(index.search("cat dog", 1).len(), 1, "k applies");
        assert!(index.search("unicorn", 10).is_empty());
        assert_eq!(index.search("cat cat Cat", 10), index.search("cat", 10), "repeated query words count once");
    }
}
