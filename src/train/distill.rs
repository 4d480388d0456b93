//! The distillation term: KL(teacher ‖ student) between the teacher's and the student's softmax distributions
//! over each query's in-batch candidates (the batch's documents and hard negatives), each at its own
//! temperature. The teacher's side is fixed ([`TeacherTargets`], built on the host from its cosine scores); the
//! student's is a tensor, so the term's gradient, (student − teacher) / rows per logit, flows into the towers.
//! Columns masked out of the InfoNCE loss (not negatives of the query) are masked on both sides.
//!
//! A leaf of the trainer: it uses candle and nothing else of the crate but [`TrainError`].

use candle_core::{Device, Tensor};

use super::TrainError;

/// Logits at or below this are masked (the InfoNCE masks add -1e4).
const MASKED: f32 = -1e3;

/// The teacher's distribution per query row, and the constant Σ p log p of the KL.
pub struct TeacherTargets {
    /// `[rows, columns]` probabilities (0 where masked).
    pub probabilities: Tensor,
    /// Σ over the whole batch of p · ln p (0 · ln 0 taken as 0).
    sum_p_log_p: f64,
    rows: usize,
}

impl TeacherTargets {
    /// Softmax rows of `scores / temperature` (row-major `[rows, columns]`), with `mask` (additive, as the
    /// InfoNCE mask: entries at or below -1000 are left out).
    pub fn new(
        scores: &[f32],
        columns: usize,
        temperature: f64,
        mask: Option<&[f32]>,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let rows = scores.len() / columns.max(1);
        let mut probabilities = vec![0f32; scores.len()];
        let mut sum_p_log_p = 0f64;
        for r in 0..rows {
            let logits: Vec<Option<f64>> = (0..columns)
                .map(|c| {
                    let i = r * columns + c;
                    let masked = mask.is_some_and(|m| m[i] <= MASKED);
                    (!masked).then(|| scores[i] as f64 / temperature)
                })
                .collect();
            let top = logits.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().flatten().map(|l| (l - top).exp()).sum();
            for (c, l) in logits.iter().enumerate() {
                if let Some(l) = l {
                    let log_p = l - top - total.ln();
                    probabilities[r * columns + c] = log_p.exp() as f32;
                    sum_p_log_p += log_p.exp() * log_p;
                }
            }
        }
        Ok(Self { probabilities: Tensor::from_vec(probabilities, (rows, columns), device)?, sum_p_log_p, rows })
    }
}

/// Mean over rows of KL(teacher ‖ softmax(`student_logits`)), `student_logits` `[rows, columns]` (already divided
/// by the student's temperature and masked).
pub fn kl_to_teacher(student_logits: &Tensor, targets: &TeacherTargets) -> Result<Tensor, TrainError> {
    let log_q = candle_nn::ops::log_softmax(student_logits, 1)?;
    let cross = (&targets.probabilities * log_q)?.sum_all()?;
    let rows = targets.rows.max(1) as f64;
    Ok(cross.affine(-1.0 / rows, targets.sum_p_log_p / rows)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn student(logits: &[f32], cols: usize) -> Var {
        Var::from_tensor(&Tensor::from_vec(logits.to_vec(), (logits.len() / cols, cols), &Device::Cpu).unwrap())
            .unwrap()
    }

    fn softmax(row: &[f32]) -> Vec<f32> {
        let total: f32 = row.iter().map(|x| x.exp()).sum();
        row.iter().map(|x| x.exp() / total).collect()
    }

    #[test]
    fn the_term_is_zero_when_student_and_teacher_agree() {
        // Teacher cosines at temperature 0.05 are the same distribution as these student logits.
        let cosines = [0.9f32, 0.7, 0.2, 0.1, 0.4, 0.35];
        let logits: Vec<f32> = cosines.iter().map(|c| c / 0.05).collect();
        let targets = TeacherTargets::new(&cosines, 3, 0.05, None, &Device::Cpu).unwrap();
        let s = student(&logits, 3);
        let kl = kl_to_teacher(s.as_tensor(), &targets).unwrap();
        assert!(kl.to_scalar::<f32>().unwrap().abs() < 1e-5);
        let grads = kl.backward().unwrap();
        let g = grads.get(&s).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|x| x.abs() < 1e-6), "{g:?}");
    }

    #[test]
    fn its_gradient_moves_the_students_distribution_toward_the_teachers() {
        let (cols, rows) = (4, 2);
        let teacher = [0.9f32, 0.1, 0.5, 0.3, 0.2, 0.8, 0.1, 0.6];
        let targets = TeacherTargets::new(&teacher, cols, 0.1, None, &Device::Cpu).unwrap();
        let p = targets.probabilities.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut logits = vec![0f32; cols * rows]; // the student starts uniform
        let kl_of = |logits: &[f32]| {
            let s = student(logits, cols);
            let kl = kl_to_teacher(s.as_tensor(), &targets).unwrap();
            let grads = kl.backward().unwrap();
            let g = grads.get(&s).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (kl.to_scalar::<f32>().unwrap(), g)
        };
        let (first, g) = kl_of(&logits);
        assert!(first > 0.05);
        // The gradient is (q - p) / rows: it lowers the logits the teacher ranks below the student's share.
        for (i, gi) in g.iter().enumerate() {
            let q = 1.0 / cols as f32;
            assert!((gi - (q - p[i]) / rows as f32).abs() < 1e-5, "{i}: {gi}");
        }
        let mut last = first;
        for _ in 0..50 {
            let (kl, g) = kl_of(&logits);
            assert!(kl <= last + 1e-6);
            last = kl;
            logits.iter_mut().zip(&g).for_each(|(l, gi)| *l -= 2.0 * gi);
        }
        assert!(last < first / 10.0, "{first} -> {last}");
        // The student's top candidates are now the teacher's.
        for r in 0..rows {
            let q = softmax(&logits[r * cols..(r + 1) * cols]);
            let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
            assert_eq!(argmax(&q), argmax(&p[r * cols..(r + 1) * cols]));
        }
    }

    #[test]
    fn masked_candidates_count_on_neither_side() {
        let mask = [0f32, -1e4, 0.0];
        let targets = TeacherTargets::new(&[0.5, 0.99, 0.1], 3, 0.05, Some(&mask), &Device::Cpu).unwrap();
        let p = targets.probabilities.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(p[1], 0.0);
        assert!((p[0] + p[2] - 1.0).abs() < 1e-6);
        // A student that matches the teacher on the unmasked columns has no KL, whatever the masked one holds.
        let logits = [0.5 / 0.05, 0.99 / 0.05 - 1e4, 0.1 / 0.05];
        let kl = kl_to_teacher(student(&logits, 3).as_tensor(), &targets).unwrap();
        assert!(kl.to_scalar::<f32>().unwrap().abs() < 1e-5);
    }
}
