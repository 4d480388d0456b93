//! Interleaving over time: an interleave report's impressions split into at most [`MAX_BUCKETS`] equal time
//! buckets from the first impression's logging time to the last's, with each bucket's wins, ties and impressions
//! without a click, by the rule the report's totals use ([`super::super::interleave::outcome`]), so the buckets
//! sum to the totals. Counts are per bucket, not cumulative.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::Serialize;

use super::super::interleave::{outcome, Outcome};
use crate::store::InterleaveImpression;

/// The most buckets a timeline has.
pub const MAX_BUCKETS: usize = 24;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelineBucket {
    /// RFC 3339; impressions logged at `start` or later and before the next bucket's start belong here.
    pub start: String,
    /// The next bucket's start; the last bucket's is the last impression's time (and includes it).
    pub end: String,
    pub impressions: u64,
    /// Impressions won by each arm, by arm name.
    pub wins: BTreeMap<String, u64>,
    pub ties: u64,
    pub no_click: u64,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The timeline of `impressions` (any order) for the arms `names`: `[]` without impressions, one bucket when
/// they all share one instant, else `min(24, span in ms)` buckets of equal width. A time that does not parse
/// (the store writes them all as RFC 3339) counts at the first impression's time, so that nothing is lost.
pub fn timeline(impressions: &[InterleaveImpression], names: [&str; 2]) -> Vec<TimelineBucket> {
    let times: Vec<Option<DateTime<Utc>>> =
        impressions.iter().map(|i| DateTime::parse_from_rfc3339(&i.at).ok().map(|t| t.with_timezone(&Utc))).collect();
    let (Some(first), Some(last)) = (times.iter().flatten().min().copied(), times.iter().flatten().max().copied())
    else {
        return Vec::new();
    };
    let span = (last - first).num_milliseconds().max(0);
    let n = (span as usize).clamp(1, MAX_BUCKETS);
    let start_of = |i: usize| first + Duration::milliseconds(span * i as i64 / n as i64);
    let mut buckets: Vec<TimelineBucket> = (0..n)
        .map(|i| TimelineBucket {
            start: rfc3339(start_of(i)),
            end: rfc3339(if i + 1 == n { last } else { start_of(i + 1) }),
            impressions: 0,
            wins: names.iter().map(|n| (n.to_string(), 0)).collect(),
            ties: 0,
            no_click: 0,
        })
        .collect();
    for (impression, at) in impressions.iter().zip(&times) {
        let offset = at.map_or(0, |t| (t - first).num_milliseconds().max(0));
        let index = if span == 0 { 0 } else { ((offset as i128 * n as i128) / span as i128) as usize };
        let bucket = &mut buckets[index.min(n - 1)];
        bucket.impressions += 1;
        match outcome([impression.clicks[0] as usize, impression.clicks[1] as usize]) {
            Outcome::Win(k) => *bucket.wins.entry(names[k].to_string()).or_default() += 1,
            Outcome::Tie => bucket.ties += 1,
            Outcome::NoClick => bucket.no_click += 1,
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64, clicks: [u64; 2]) -> InterleaveImpression {
        let t = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.000Z").unwrap().with_timezone(&Utc)
            + Duration::milliseconds(ms);
        InterleaveImpression { at: rfc3339(t), clicks }
    }

    #[test]
    fn no_impressions_no_buckets_and_one_instant_one_bucket() {
        assert!(timeline(&[], ["a", "b"]).is_empty());
        let one = timeline(&[at(5, [1, 0]), at(5, [0, 0]), at(5, [2, 2])], ["a", "b"]);
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].start.as_str(), one[0].end.as_str()),
            ("2026-01-01T00:00:00.005Z", "2026-01-01T00:00:00.005Z")
        );
        assert_eq!(
            (one[0].impressions, one[0].wins["a"], one[0].wins["b"], one[0].ties, one[0].no_click),
            (3, 1, 0, 1, 1)
        );
    }

    #[test]
    fn equal_buckets_from_first_to_last_that_sum_to_the_totals() {
        // 48 s of impressions, one every second: 24 buckets of 2 s, two impressions in each but the last (three).
        let impressions: Vec<_> = (0..=48).map(|s| at(s * 1000, [(s % 3) as u64, (s % 2) as u64])).collect();
        let buckets = timeline(&impressions, ["a", "b"]);
        assert_eq!(buckets.len(), MAX_BUCKETS);
        assert_eq!(buckets[0].start, "2026-01-01T00:00:00.000Z");
        assert_eq!(buckets[0].end, "2026-01-01T00:00:02.000Z");
        assert_eq!(buckets[23].end, "2026-01-01T00:00:48.000Z");
        assert!(buckets.windows(2).all(|w| w[0].end == w[1].start));
        assert!(buckets[..23].iter().all(|b| b.impressions == 2));
        assert_eq!(buckets[23].impressions, 3);
        let sum = |f: &dyn Fn(&TimelineBucket) -> u64| buckets.iter().map(f).sum::<u64>();
        let expect = |rule: &dyn Fn(u64, u64) -> bool| (0..=48u64).filter(|s| rule(s % 3, s % 2)).count() as u64;
        assert_eq!(sum(&|b| b.impressions), 49);
        assert_eq!(sum(&|b| b.wins["a"]), expect(&|a, b| a > b));
        assert_eq!(sum(&|b| b.wins["b"]), expect(&|a, b| b > a));
        assert_eq!(sum(&|b| b.ties), expect(&|a, b| a == b && a > 0));
        assert_eq!(sum(&|b| b.no_click), expect(&|a, b| a == 0 && b == 0));
    }

    #[test]
    fn a_short_span_has_one_bucket_per_millisecond() {
        let buckets = timeline(&[at(0, [0, 0]), at(3, [0, 1])], ["a", "b"]);
        assert_eq!(buckets.len(), 3);
        assert_eq!((buckets[0].impressions, buckets[1].impressions, buckets[2].impressions), (1, 0, 1));
        assert_eq!(buckets[2].wins["b"], 1);
    }
}
