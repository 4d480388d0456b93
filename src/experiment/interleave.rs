//! Team-draft interleaving (Radlinski, Kurup & Joachims 2008): two rankings merged into one list, each result
//! attributed to the arm ("team") that picked it. In every round the team with fewer picks picks next (a coin
//! decides ties), taking its highest-ranked result not shown yet. A click credits the result's team; the arm
//! with more credited clicks wins the impression.

use std::collections::HashSet;

/// The interleaved list: (document id, team index 0 or 1), in display order.
pub type Interleaved = Vec<(String, usize)>;

/// SplitMix64: a tiny, well-mixed generator for the coin flips (seeded per request, so a request's list can be
/// reproduced from its id).
struct Coin(u64);

impl Coin {
    fn flip(&mut self) -> bool {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }
}

/// Merges `a` (team 0) and `b` (team 1) into at most `k` distinct results.
pub fn team_draft(a: &[String], b: &[String], k: usize, seed: u64) -> Interleaved {
    let mut coin = Coin(seed);
    let mut shown: HashSet<&str> = HashSet::new();
    let mut out = Vec::with_capacity(k);
    let (mut picks, mut next) = ([0usize; 2], [0usize; 2]);
    let lists = [a, b];
    while out.len() < k {
        // Skip results the other team already placed.
        for t in 0..2 {
            while next[t] < lists[t].len() && shown.contains(lists[t][next[t]].as_str()) {
                next[t] += 1;
            }
        }
        let available = [next[0] < a.len(), next[1] < b.len()];
        let team = match available {
            [false, false] => break,
            [true, false] => 0,
            [false, true] => 1,
            [true, true] => match picks[0].cmp(&picks[1]) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Equal => usize::from(coin.flip()),
            },
        };
        let id = &lists[team][next[team]];
        shown.insert(id.as_str());
        out.push((id.clone(), team));
        picks[team] += 1;
        next[team] += 1;
    }
    out
}

/// Who won an impression, from the credited clicks of each team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Win(usize),
    Tie,
    NoClick,
}

pub fn outcome(clicks: [usize; 2]) -> Outcome {
    match clicks {
        [0, 0] => Outcome::NoClick,
        [a, b] if a > b => Outcome::Win(0),
        [a, b] if b > a => Outcome::Win(1),
        _ => Outcome::Tie,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    /// The invariants every interleaved list must keep, for any pair of rankings and any seed.
    fn check(a: &[String], b: &[String], k: usize, list: &Interleaved) {
        let mut seen = HashSet::new();
        for (id, _) in list {
            assert!(seen.insert(id.clone()), "duplicate {id} in {list:?}");
        }
        let distinct: HashSet<&String> = a.iter().chain(b).collect();
        assert_eq!(list.len(), k.min(distinct.len()), "fills k when the lists allow");
        let mut picks = [0usize; 2];
        let mut shown: HashSet<&String> = HashSet::new();
        for (id, team) in list {
            let lists = [a, b];
            // Attribution: the pick is the team's best result not already shown.
            let best = lists[*team].iter().find(|x| !shown.contains(x));
            assert_eq!(best, Some(id), "team {team} must pick its top unshown result");
            // Balance: a team only picks more when it is behind, tied, or the other team has nothing left.
            let other = 1 - team;
            let other_has_more = lists[other].iter().any(|x| !shown.contains(x));
            assert!(picks[*team] <= picks[other] || !other_has_more, "unbalanced picks in {list:?}");
            picks[*team] += 1;
            shown.insert(id);
        }
    }

    #[test]
    fn team_draft_keeps_its_invariants() {
        let cases = [
            ("d1 d2 d3 d4 d5", "d1 d2 d3 d4 d5"),
            ("d1 d2 d3 d4 d5", "d5 d4 d3 d2 d1"),
            ("a1 a2 a3 a4 a5", "b1 b2 b3 b4 b5"),
            ("x a1 y a2", "y x b1 b2 b3 b4"),
            ("a1", "b1 b2 b3 b4"),
            ("", "b1 b2"),
        ];
        for (a, b) in cases {
            let (a, b) = (ids(a), ids(b));
            for k in [1, 3, 5, 10] {
                for seed in 0..50 {
                    check(&a, &b, k, &team_draft(&a, &b, k, seed));
                }
            }
        }
    }

    #[test]
    fn identical_rankings_interleave_to_the_same_ranking_with_split_credit() {
        let a = ids("d1 d2 d3 d4");
        let list = team_draft(&a, &a, 4, 7);
        assert_eq!(list.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), a);
        let per_team = list.iter().filter(|(_, t)| *t == 0).count();
        assert_eq!(per_team, 2, "each team picks twice: {list:?}");
    }

    #[test]
    fn the_first_pick_is_a_fair_coin_and_reproducible_per_seed() {
        let (a, b) = (ids("a1 a2"), ids("b1 b2"));
        let first_a = (0..2000u64).filter(|s| team_draft(&a, &b, 2, *s)[0].1 == 0).count();
        assert!((900..1100).contains(&first_a), "team 0 first in {first_a} of 2000");
        assert_eq!(team_draft(&a, &b, 2, 42), team_draft(&a, &b, 2, 42));
    }

    #[test]
    fn outcomes_follow_credited_clicks() {
        assert_eq!(outcome([0, 0]), Outcome::NoClick);
        assert_eq!(outcome([2, 1]), Outcome::Win(0));
        assert_eq!(outcome([0, 1]), Outcome::Win(1));
        assert_eq!(outcome([1, 1]), Outcome::Tie);
    }
}
