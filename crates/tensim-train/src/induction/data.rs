//! Synthetic sequences on which induction pays off: a Markov chain over the vocabulary (each
//! token `a` is followed by its favourite `π(a)` with probability `p`, else by a uniform token),
//! with one segment of uniform tokens written twice. In the segment's second occurrence every
//! token after the first is predictable only by finding the first occurrence and copying the
//! token that followed it there (an induction head); a bigram model scores `1/V` on them.

use rand::seq::SliceRandom;
use rand::{Rng, RngExt, SeedableRng};

/// The sequence distribution.
#[derive(Clone, Debug)]
pub struct Sequences {
    pub vocab: usize,
    /// Positions of the model's input (each sequence has `n_ctx + 1` tokens).
    pub n_ctx: usize,
    /// Length of the repeated segment.
    pub segment: usize,
    /// Probability that a Markov step goes to the favourite successor.
    pub markov: f64,
    /// `π`: a random permutation, the favourite successor of each token.
    pub successor: Vec<u32>,
}

/// `rows` sequences: inputs `tokens[r·n + t]`, next-token targets, and which targets are
/// predictable by induction (`t ≥ p₂` with `p₂` the second occurrence's first position).
#[derive(Clone, Debug)]
pub struct Batch {
    pub rows: usize,
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    pub predictable: Vec<bool>,
}

impl Sequences {
    /// The distribution over `vocab` tokens; `π` drawn from `seed`.
    pub fn new(vocab: usize, n_ctx: usize, segment: usize, markov: f64, seed: u64) -> Sequences {
        assert!(
            2 * segment <= n_ctx + 1 && segment >= 2,
            "two segments must fit a sequence"
        );
        let mut successor: Vec<u32> = (0..vocab as u32).collect();
        successor.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        Sequences {
            vocab,
            n_ctx,
            segment,
            markov,
            successor,
        }
    }

    /// One sequence of `n_ctx + 1` tokens and the first position of the segment's second
    /// occurrence.
    pub fn sequence(&self, rng: &mut impl Rng) -> (Vec<u32>, usize) {
        let (n, l, v) = (self.n_ctx + 1, self.segment, self.vocab as u32);
        let mut s = Vec::with_capacity(n);
        s.push(rng.random_range(0..v));
        while s.len() < n {
            let last = *s.last().expect("non-empty");
            s.push(if rng.random_bool(self.markov) {
                self.successor[last as usize]
            } else {
                rng.random_range(0..v)
            });
        }
        let first = rng.random_range(0..=n - 2 * l);
        let second = rng.random_range(first + l..=n - l);
        for k in 0..l {
            let token = rng.random_range(0..v);
            s[first + k] = token;
            s[second + k] = token;
        }
        (s, second)
    }

    /// `rows` sequences drawn from `rng`.
    pub fn batch(&self, rows: usize, rng: &mut impl Rng) -> Batch {
        let n = self.n_ctx;
        let mut b = Batch {
            rows,
            tokens: Vec::with_capacity(rows * n),
            targets: Vec::with_capacity(rows * n),
            predictable: Vec::with_capacity(rows * n),
        };
        for _ in 0..rows {
            let (s, second) = self.sequence(rng);
            b.tokens.extend_from_slice(&s[..n]);
            b.targets.extend_from_slice(&s[1..]);
            // Target `t` is token `t + 1`: predictable for `t + 1 ∈ second+1 .. second+L`.
            b.predictable
                .extend((0..n).map(|t| t >= second && t + 1 < second + self.segment));
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictable_targets_repeat_the_token_after_an_earlier_occurrence() {
        let seq = Sequences::new(16, 24, 5, 0.5, 1);
        let b = seq.batch(200, &mut rand::rngs::StdRng::seed_from_u64(2));
        let n = seq.n_ctx;
        for r in 0..b.rows {
            let row = |v: &[u32]| v[r * n..(r + 1) * n].to_vec();
            let (tokens, targets) = (row(&b.tokens), row(&b.targets));
            let marked: Vec<usize> = (0..n).filter(|&t| b.predictable[r * n + t]).collect();
            assert_eq!(marked.len(), seq.segment - 1);
            // Consecutive positions, each target the token after an earlier copy of its input.
            assert!(marked.windows(2).all(|w| w[1] == w[0] + 1));
            let lag = (1..=marked[0])
                .find(|&lag| {
                    marked
                        .iter()
                        .all(|&t| tokens[t - lag] == tokens[t] && tokens[t + 1 - lag] == targets[t])
                })
                .expect("an earlier occurrence");
            assert!(lag >= seq.segment);
        }
    }
}
