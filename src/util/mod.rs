//! Leaf helpers every layer may use, and that use nothing of Duet's: the seeded random generator ([`rng`]),
//! vector normalisation, the one definition of means and quantiles every report uses ([`stats`]), the clock
//! ([`now`]) and JSONL reading ([`jsonl`]).

pub mod jsonl;
pub mod rng;
pub mod stats;

/// The current UTC time as stored and reported: RFC 3339 with milliseconds, e.g. `2026-12-01T11:09:11.123Z`.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// A unit-length copy of `v` (a zero vector stays zero).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let mut copy = v.to_vec();
    normalize(&mut copy);
    copy
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
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = now();
        assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok(), "{t}");
        assert!(t.ends_with('Z') && t.len() == "2026-12-01T11:09:11.123Z".len(), "{t}");
    }
}
