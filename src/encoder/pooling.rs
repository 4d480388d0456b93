//! Pooling: from token states `[batch, sequence, dimension]` (or sentence vectors `[batch, dimension]`) to one
//! vector per text, honouring the attention mask on either padding side.

use super::Pooling;

/// Pools `states` (row-major, `[batch, seq, dim]`, or `[batch, dim]` for [`Pooling::Output`]) with `mask`
/// (`[batch, seq]`, 1 for real tokens). A row with no real token pools to zeros.
pub fn pool(states: &[f32], batch: usize, seq: usize, dim: usize, mask: &[i64], pooling: Pooling) -> Vec<Vec<f32>> {
    if pooling == Pooling::Output {
        return states.chunks(dim).take(batch).map(<[f32]>::to_vec).collect();
    }
    (0..batch)
        .map(|b| {
            let row_mask = &mask[b * seq..(b + 1) * seq];
            let token = |t: usize| &states[(b * seq + t) * dim..(b * seq + t + 1) * dim];
            let kept = || (0..seq).filter(|&t| row_mask[t] != 0);
            match pooling {
                Pooling::Mean => {
                    let mut sum = vec![0f32; dim];
                    let mut count = 0usize;
                    for t in kept() {
                        for (s, v) in sum.iter_mut().zip(token(t)) {
                            *s += v;
                        }
                        count += 1;
                    }
                    let scale = 1.0 / count.max(1) as f32;
                    sum.iter_mut().for_each(|s| *s *= scale);
                    sum
                }
                Pooling::Cls => kept().next().map(|t| token(t).to_vec()).unwrap_or_else(|| vec![0.0; dim]),
                Pooling::LastToken => kept().next_back().map(|t| token(t).to_vec()).unwrap_or_else(|| vec![0.0; dim]),
                Pooling::Output => unreachable!("handled above"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two texts, three positions, two dimensions. Row 0: right-padded (2 tokens); row 1: left-padded (2 tokens).
    const STATES: [f32; 12] = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0, -50.0, -50.0, 5.0, 6.0, 7.0, 8.0];
    const MASK: [i64; 6] = [1, 1, 0, 0, 1, 1];

    #[test]
    fn mean_ignores_padding_on_either_side() {
        let pooled = pool(&STATES, 2, 3, 2, &MASK, Pooling::Mean);
        assert_eq!(pooled, vec![vec![2.0, 3.0], vec![6.0, 7.0]]);
    }

    #[test]
    fn cls_and_last_token_pick_the_first_and_last_kept_tokens() {
        assert_eq!(pool(&STATES, 2, 3, 2, &MASK, Pooling::Cls), vec![vec![1.0, 2.0], vec![5.0, 6.0]]);
        assert_eq!(pool(&STATES, 2, 3, 2, &MASK, Pooling::LastToken), vec![vec![3.0, 4.0], vec![7.0, 8.0]]);
    }

    #[test]
    fn output_pooling_splits_sentence_vectors_and_empty_rows_pool_to_zero() {
        assert_eq!(pool(&[1.0, 2.0, 3.0, 4.0], 2, 0, 2, &[], Pooling::Output), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert_eq!(pool(&STATES[..6], 1, 3, 2, &[0, 0, 0], Pooling::LastToken), vec![vec![0.0, 0.0]]);
    }
}
