//! Graded human judgements as a qrels file: the graded feedback of an experiment (raters clicking results in
//! blind judging, with a grade), one line per (query, document) with the mean of its grades, in the
//! tab-separated form `duet eval --qrels` reads (a `query`, `doc_id`, `grade` header, then sorted by query, then
//! document id). The query column is the query text; control characters in it (tabs, newlines) become spaces.

use std::collections::BTreeMap;

use super::{ExperimentError, Experiments};
use crate::store::GradedFeedback;

/// The header line of an exported qrels file.
pub const HEADER: &str = "query\tdoc_id\tgrade";

/// An experiment's graded judgements.
#[derive(Debug, Clone)]
pub struct Qrels {
    /// The experiment's name (the download's file name).
    pub experiment: String,
    /// The file's text.
    pub tsv: String,
}

/// Text on one line of a tab-separated file: every control character (tab, newline) becomes a space.
fn one_field(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The qrels text of graded feedback rows: one line per (query, document), the mean grade over its rows.
pub fn qrels_tsv(rows: &[GradedFeedback]) -> String {
    let mut grades: BTreeMap<(String, String), (f64, u32)> = BTreeMap::new();
    for row in rows {
        let entry = grades.entry((one_field(&row.query), one_field(&row.doc_id))).or_default();
        entry.0 += row.grade;
        entry.1 += 1;
    }
    let mut out = format!("{HEADER}\n");
    for ((query, doc_id), (sum, n)) in grades {
        out.push_str(&format!("{query}\t{doc_id}\t{}\n", sum / f64::from(n)));
    }
    out
}

/// The graded judgements of an experiment (id or name).
pub async fn qrels(experiments: &Experiments, key: &str) -> Result<Qrels, ExperimentError> {
    let experiment = experiments.find(key)?;
    let rows = experiments.store().graded_feedback(&experiment.id).await?;
    Ok(Qrels { experiment: experiment.name.clone(), tsv: qrels_tsv(&rows) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(query: &str, doc_id: &str, grade: f64) -> GradedFeedback {
        GradedFeedback { query: query.into(), doc_id: doc_id.into(), grade }
    }

    #[test]
    fn one_line_per_query_and_document_with_the_mean_grade_sorted() {
        let rows = [
            row("sort\ta list", "d2", 3.0),
            row("b", "d1", 1.0),
            row("sort a list", "d2", 2.0),
            row("sort\na list", "d1", 10.0),
        ];
        assert_eq!(qrels_tsv(&rows), "query\tdoc_id\tgrade\nb\td1\t1\nsort a list\td1\t10\nsort a list\td2\t2.5\n");
        assert_eq!(qrels_tsv(&[]), "query\tdoc_id\tgrade\n");
    }
}
