//! Leaf helpers every layer may use, and that use nothing of Duet's: the seeded random generator ([`rng`]),
//! vector normalisation, the one definition of means and quantiles every report uses ([`stats`]), the clock
//! ([`now`]), error chains for logs and messages, file I/O errors that name the file ([`fs`]), JSONL reading
//! ([`jsonl`]), and how request bodies read integers and nulls ([`json`]).

pub mod fs;
pub mod json;
pub mod jsonl;
pub mod rng;
pub mod stats;

/// The current UTC time as stored and reported: RFC 3339 with milliseconds, e.g. `2026-12-01T11:09:11.123Z`.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An error and each of its sources, `outer: inner: innermost`: what a log line or a client message shows when
/// the outer error alone would hide the reason.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// A unit-length copy of `v` (a zero vector stays zero), with the norm computed and applied in f64: for the
/// analyses of `duet eval`, where [`normalize`]'s f32 (the serving path's, fast and in place) would move the last
/// digits of the reports.
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    if norm == 0.0 {
        v.to_vec()
    } else {
        v.iter().map(|x| (*x as f64 / norm) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_gives_unit_length() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(normalized(&[3.0, 4.0]), vec![0.6, 0.8]);
        let mut zero = vec![0.0, 0.0];
        normalize(&mut zero);
        assert_eq!(zero, vec![0.0, 0.0]);
    }

    #[test]
    fn error_chains_show_every_source() {
        let io = std::io::Error::other("disk on fire");
        let err = crate::util::jsonl::JsonlError::Read { path: "x.jsonl".into(), source: io };
        assert_eq!(error_chain(&err), "cannot read x.jsonl: disk on fire");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = now();
        assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok(), "{t}");
        assert!(t.ends_with('Z') && t.len() == "2026-12-01T11:09:11.123Z".len(), "{t}");
    }
}
