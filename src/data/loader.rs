//! Validation splits, subsets (first rows, or class-balanced) and seeded per-epoch batch
//! orders.
//!
//! Every random choice draws from its own stream of [`crate::rng`], so results depend only
//! on the seeds, never on the platform, backend or thread count.

use rand::seq::SliceRandom;

use super::{DataError, Split};
use crate::rng::{self, Domain};

/// Splits `train` into `(train, validation)`: a seeded permutation picks
/// `val_size` samples for validation; the rest stay for training. Both parts
/// keep the original sample order (the batch order shuffles anyway). The
/// lottery-ticket paper uses 55,000 / 5,000. `val_size == 0` gives an empty
/// validation split; `val_size >= n` is an error (nothing left to train on).
pub fn split_validation(
    train: &Split,
    val_size: usize,
    seed: u64,
) -> Result<(Split, Split), DataError> {
    if val_size >= train.n {
        return Err(DataError::Invalid(format!(
            "validation size {val_size} leaves no training data: the training set has {} \
             samples; choose a validation size below {}",
            train.n, train.n
        )));
    }
    if val_size == 0 {
        return Ok((train.clone(), Split::empty()));
    }
    let mut perm: Vec<usize> = (0..train.n).collect();
    perm.shuffle(&mut rng::stream(seed, Domain::Validation, 0));
    let mut val_idx = perm[..val_size].to_vec();
    let mut train_idx = perm[val_size..].to_vec();
    val_idx.sort_unstable();
    train_idx.sort_unstable();
    Ok((train.take(&train_idx), train.take(&val_idx)))
}

/// The first `n` samples of `split` (all of them if it has fewer), for tiny
/// test pipelines.
pub fn subset(split: &Split, n: usize) -> Split {
    let n = n.min(split.n);
    split.take(&(0..n).collect::<Vec<_>>())
}

/// A class-balanced subset of `n` samples (all of `split` if it has no more than `n`): each
/// of the `k` classes gives `n / k` samples, the first `n % k` classes one more. Within a
/// class the samples are picked by a permutation seeded by `(seed, class)`; the subset keeps
/// the split's order. The reduced-scale protocols use one fixed seed for every arm.
pub fn balanced_subset(split: &Split, n: usize, seed: u64) -> Result<Split, DataError> {
    if n >= split.n {
        return Ok(split.clone());
    }
    let (Some(labels), Some(k)) = (split.labels(), split.classes()) else {
        return Err(DataError::Invalid(
            "a class-balanced subset needs class labels; this split has regression targets".into(),
        ));
    };
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut picked = Vec::with_capacity(n);
    for (c, mut members) in by_class.into_iter().enumerate() {
        let quota = n / k + usize::from(c < n % k);
        if members.len() < quota {
            return Err(DataError::Invalid(format!(
                "a class-balanced subset of {n} needs {quota} samples of class {c}, but the \
                 split ({} samples) has {}; choose a subset of at most {}",
                split.n,
                members.len(),
                members.len() * k
            )));
        }
        members.shuffle(&mut rng::stream(seed, Domain::BalancedSubset, c as u64));
        picked.extend_from_slice(&members[..quota]);
    }
    picked.sort_unstable();
    Ok(split.take(&picked))
}

/// The sample order of epoch `epoch`: a permutation of `0..n` drawn from a
/// ChaCha8 stream keyed by `(seed, epoch)`, so any epoch can be recomputed
/// without the previous ones. Truncated to a multiple of `batch`: the last
/// partial batch of each epoch is dropped (every step sees exactly `batch`
/// samples; the dropped samples differ from epoch to epoch). `batch == 0`
/// returns the full permutation.
pub fn batch_indices(n: usize, batch: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng::stream(seed, Domain::Batches, epoch));
    if let Some(full) = n.checked_div(batch) {
        perm.truncate(full * batch);
    }
    perm
}

/// Walks through [`batch_indices`] epoch after epoch. Can start at any
/// iteration (for rewinding or resuming) without replaying earlier epochs.
#[derive(Clone, Debug)]
pub struct BatchOrder {
    n: usize,
    batch: usize,
    seed: u64,
    epoch: u64,
    pos: usize,
    order: Vec<usize>,
}

impl BatchOrder {
    /// The order positioned before iteration `start` (0 = the first batch of epoch 0).
    pub fn new(n: usize, batch: usize, seed: u64, start: u64) -> Result<BatchOrder, DataError> {
        if batch == 0 || batch > n {
            return Err(DataError::Invalid(format!(
                "batch size {batch} does not fit a training set of {n} samples; use a batch \
                 size between 1 and {n}"
            )));
        }
        let per_epoch = (n / batch) as u64;
        let epoch = start / per_epoch;
        let pos = (start % per_epoch) as usize * batch;
        Ok(BatchOrder {
            n,
            batch,
            seed,
            epoch,
            pos,
            order: batch_indices(n, batch, seed, epoch),
        })
    }

    /// Full batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.n / self.batch
    }

    /// The epoch the next batch comes from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The sample indices of the next batch.
    pub fn next_batch(&mut self) -> &[usize] {
        if self.pos >= self.order.len() {
            self.epoch += 1;
            self.pos = 0;
            self.order = batch_indices(self.n, self.batch, self.seed, self.epoch);
        }
        let start = self.pos;
        self.pos += self.batch;
        &self.order[start..self.pos]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{BatchTargets, Inputs, Targets, gather_range};

    /// Row i is `[2i, 2i + 1]` with label `i % 10`.
    fn toy(n: usize) -> Split {
        Split::new(
            Inputs::f32((0..n * 2).map(|x| x as f32).collect(), [2, 1, 1]),
            Targets::classes((0..n).map(|i| (i % 10) as u8).collect(), 10),
        )
        .unwrap()
    }

    fn values(s: &Split) -> Vec<f32> {
        let (mut x, mut y) = (Vec::new(), BatchTargets::default());
        gather_range(s, 0..s.n, &mut x, &mut y);
        x
    }

    #[test]
    fn validation_split_is_seeded_disjoint_and_complete() {
        let s = toy(20);
        let (tr, va) = split_validation(&s, 5, 7).unwrap();
        assert_eq!((tr.n, va.n), (15, 5));
        assert_eq!((values(&tr).len(), values(&va).len()), (30, 10));
        // Row i of the toy set is [2i, 2i+1]: recover the indices.
        let ids =
            |s: &Split| -> Vec<usize> { values(s).chunks(2).map(|r| r[0] as usize / 2).collect() };
        let (ti, vi) = (ids(&tr), ids(&va));
        let mut all: Vec<usize> = ti.iter().chain(&vi).copied().collect();
        all.sort();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        assert!(ti.windows(2).all(|w| w[0] < w[1]) && vi.windows(2).all(|w| w[0] < w[1]));
        for (k, &i) in vi.iter().enumerate() {
            assert_eq!(va.labels().unwrap()[k], (i % 10) as u8);
        }
        // Same seed, same split; another seed, another split.
        assert_eq!(split_validation(&s, 5, 7).unwrap().1, va);
        assert_ne!(split_validation(&s, 5, 8).unwrap().1, va);
    }

    #[test]
    fn validation_edge_cases() {
        let s = toy(4);
        let (tr, va) = split_validation(&s, 0, 1).unwrap();
        assert_eq!((tr, va.n), (s.clone(), 0));
        assert!(split_validation(&s, 4, 1).is_err());
        let e = split_validation(&s, 9, 1).unwrap_err().to_string();
        assert!(e.contains("below 4"), "{e}");
    }

    #[test]
    fn subset_takes_the_first_rows() {
        let s = toy(10);
        let t = subset(&s, 3);
        assert_eq!(t.n, 3);
        assert_eq!(values(&t), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(t.labels(), Some(&[0u8, 1, 2][..]));
        assert_eq!(subset(&s, 99), s);
    }

    #[test]
    fn balanced_subset_takes_equal_shares_per_class() {
        // 100 samples, labels i % 10 except that class 9 has only 3 members (relabelled 0).
        let labels: Vec<u8> = (0..100)
            .map(|i| {
                if i % 10 == 9 && i >= 30 {
                    0
                } else {
                    (i % 10) as u8
                }
            })
            .collect();
        let s = Split::new(
            Inputs::f32((0..100).map(|x| x as f32).collect(), [1, 1, 1]),
            Targets::classes(labels.clone(), 10),
        )
        .unwrap();
        let b = balanced_subset(&s, 23, 5).unwrap();
        assert_eq!(b.n, 23);
        let ids: Vec<usize> = values(&b).iter().map(|&v| v as usize).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "kept in order: {ids:?}"
        );
        let mut counts = [0usize; 10];
        for &i in &ids {
            counts[labels[i] as usize] += 1;
        }
        // 23 = 10 × 2 + 3: classes 0, 1 and 2 give one more.
        assert_eq!(counts, [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]);
        assert_eq!(balanced_subset(&s, 23, 5).unwrap(), b);
        assert_ne!(balanced_subset(&s, 23, 6).unwrap(), b);
        // Class 9 has 3 members: 40 needs 4 of each.
        let e = balanced_subset(&s, 40, 5).unwrap_err().to_string();
        assert!(
            e.contains("needs 4 samples of class 9, but the split (100 samples) has 3; choose a subset of at most 30"),
            "{e}"
        );
        assert_eq!(balanced_subset(&s, 100, 5).unwrap(), s);
        let v = Split::new(
            Inputs::f32(vec![0.0; 4], [1, 1, 1]),
            Targets::values(vec![0.0; 4], 1),
        )
        .unwrap();
        assert!(balanced_subset(&v, 2, 0).is_err());
    }

    #[test]
    fn batch_indices_are_per_epoch_permutations() {
        let e0 = batch_indices(10, 3, 42, 0);
        let e1 = batch_indices(10, 3, 42, 1);
        assert_eq!((e0.len(), e1.len()), (9, 9));
        assert_ne!(e0, e1);
        assert_eq!(e1, batch_indices(10, 3, 42, 1));
        let mut full = batch_indices(10, 0, 42, 0);
        assert_eq!(full[..9], e0[..]);
        full.sort();
        assert_eq!(full, (0..10).collect::<Vec<_>>());
        assert_ne!(batch_indices(10, 3, 43, 0), e0);
    }

    #[test]
    fn batch_order_walks_epochs_and_can_start_anywhere() {
        let mut o = BatchOrder::new(10, 3, 5, 0).unwrap();
        assert_eq!(o.batches_per_epoch(), 3);
        let mut seen = Vec::new();
        for _ in 0..7 {
            seen.push(o.next_batch().to_vec());
        }
        let e0 = batch_indices(10, 3, 5, 0);
        let e1 = batch_indices(10, 3, 5, 1);
        let e2 = batch_indices(10, 3, 5, 2);
        assert_eq!(seen[0], e0[0..3]);
        assert_eq!(seen[2], e0[6..9]);
        assert_eq!(seen[3], e1[0..3]);
        assert_eq!(seen[6], e2[0..3]);
        assert_eq!(o.epoch(), 2);
        let mut late = BatchOrder::new(10, 3, 5, 4).unwrap();
        assert_eq!(late.next_batch(), &seen[4][..]);
        assert!(BatchOrder::new(10, 11, 5, 0).is_err());
        assert!(BatchOrder::new(10, 0, 5, 0).is_err());
    }
}
