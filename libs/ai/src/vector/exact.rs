//! Exact cosine search: the kernel of [`super::Embedded`] and the yardstick for benchmarks of
//! approximate indexes ([`brute_force_top_k`], [`recall_at_k`]).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

/// Dot product with eight independent accumulators, so the compiler can vectorise it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    let tail = n - n % LANES;
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in a[tail..].iter().zip(&b[tail..]) {
        sum += x * y;
    }
    sum
}

/// A candidate in the bounded heap. `Ord` puts the *worse* candidate higher, so the heap's top
/// is the one to evict: lower similarity, or on equal similarity the larger id.
struct Candidate<'a> {
    similarity: f32,
    id: &'a str,
    slot: usize,
}

impl Ord for Candidate<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .similarity
            .total_cmp(&self.similarity)
            .then_with(|| self.id.cmp(other.id))
    }
}
impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Candidate<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate<'_> {}

/// Keeps the best `k` of a stream of (similarity, id, slot), in O(n log k).
pub(crate) struct TopK<'a> {
    k: usize,
    heap: BinaryHeap<Candidate<'a>>,
}

impl<'a> TopK<'a> {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(4096)),
        }
    }

    pub(crate) fn push(&mut self, similarity: f32, id: &'a str, slot: usize) {
        if self.k == 0 {
            return;
        }
        let candidate = Candidate {
            similarity: similarity.clamp(-1.0, 1.0),
            id,
            slot,
        };
        if self.heap.len() < self.k {
            self.heap.push(candidate);
        } else if let Some(worst) = self.heap.peek()
            && candidate < *worst
        {
            self.heap.pop();
            self.heap.push(candidate);
        }
    }

    /// (slot, similarity), best first.
    pub(crate) fn into_sorted(self) -> Vec<(usize, f32)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|c| (c.slot, c.similarity))
            .collect()
    }
}

/// Exact top-`k` by cosine similarity: `(id, similarity)` best first, ties by id.
///
/// Vectors need not be normalised; zero vectors (and a zero query) have no direction and are
/// skipped (an empty result for a zero query). Vectors whose length differs from the query's
/// are skipped too.
pub fn brute_force_top_k<I: AsRef<str>>(
    vectors: &[(I, Vec<f32>)],
    query: &[f32],
    k: usize,
) -> Vec<(String, f32)> {
    let qn = dot(query, query).sqrt();
    if qn == 0.0 || !qn.is_finite() {
        return Vec::new();
    }
    let mut top = TopK::new(k);
    for (slot, (id, v)) in vectors.iter().enumerate() {
        if v.len() != query.len() {
            continue;
        }
        let vn = dot(v, v).sqrt();
        if vn == 0.0 || !vn.is_finite() {
            continue;
        }
        top.push(dot(v, query) / (vn * qn), id.as_ref(), slot);
    }
    top.into_sorted()
        .into_iter()
        .map(|(slot, sim)| (vectors[slot].0.as_ref().to_owned(), sim))
        .collect()
}

/// Recall of an approximate result against the exact one: the share of `exact` ids found in
/// `approx` (1.0 when `exact` is empty). Use the same `k` for both.
pub fn recall_at_k<A: AsRef<str>, B: AsRef<str>>(exact: &[A], approx: &[B]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let found: HashSet<&str> = approx.iter().map(AsRef::as_ref).collect();
    let hits = exact
        .iter()
        .filter(|id| found.contains(id.as_ref()))
        .count();
    hits as f64 / exact.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        for n in [0, 1, 7, 8, 9, 31, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn top_k_orders_and_bounds() {
        let vectors = vec![
            ("c", vec![1.0, 0.0]),
            ("a", vec![0.0, 1.0]),
            ("b", vec![1.0, 0.0]),
            ("d", vec![1.0, 1.0]),
            ("z", vec![0.0, 0.0]),
        ];
        let top = brute_force_top_k(&vectors, &[2.0, 0.0], 3);
        let ids: Vec<&str> = top.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "d"]);
        assert!((top[0].1 - 1.0).abs() < 1e-6);
        assert!((top[2].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(brute_force_top_k(&vectors, &[1.0, 0.0], 0), vec![]);
        assert_eq!(brute_force_top_k(&vectors, &[1.0, 0.0], 10).len(), 4);
        assert_eq!(brute_force_top_k(&vectors, &[0.0, 0.0], 10), vec![]);
    }

    #[test]
    fn recall() {
        assert_eq!(recall_at_k(&["a", "b"], &["b", "c"]), 0.5);
        assert_eq!(recall_at_k::<&str, &str>(&[], &[]), 1.0);
        assert_eq!(recall_at_k(&["a"], &["a"]), 1.0);
    }
}
