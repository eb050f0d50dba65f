//! Checkpoint schedules.

/// `{0} ∪ {⌊T·(i/(n−1))^e⌋ : i = 0..n−1} ∪ {T}`, sorted and deduplicated (MATH.md §7.1: the
/// grokking run's power schedule; `T = 10⁵, n = 100, e = 5` gives 90 steps).
pub fn power(total: usize, n: usize, exponent: f64) -> Vec<usize> {
    let mut steps: Vec<usize> = (0..n)
        .map(|i| (total as f64 * (i as f64 / (n.max(2) - 1) as f64).powf(exponent)) as usize)
        .chain([0, total])
        .collect();
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// `{0} ∪ {⌊T^(i/(n−1))⌋ : i = 0..n−1}`: `n` log-spaced steps from 1 to `T` (fewer after
/// deduplication of the first ones), and step 0.
pub fn log(total: usize, n: usize) -> Vec<usize> {
    let mut steps: Vec<usize> = (0..n)
        .map(|i| {
            (total as f64)
                .powf(i as f64 / (n.max(2) - 1) as f64)
                .round() as usize
        })
        .chain([0, total])
        .collect();
    steps.sort_unstable();
    steps.dedup();
    steps
}

#[cfg(test)]
mod tests {
    #[test]
    fn paper_schedule_has_90_steps() {
        let s = super::power(100_000, 100, 5.0);
        assert_eq!(s.len(), 90);
        assert_eq!(&s[..8], &[0, 1, 2, 3, 5, 7, 11, 14]);
        assert_eq!(&s[s.len() - 3..], &[90298, 95050, 100000]);
    }

    #[test]
    fn log_schedule_is_geometric_from_one() {
        let s = super::log(4000, 32);
        assert_eq!(&s[..4], &[0, 1, 2, 3]);
        assert_eq!(s.last(), Some(&4000));
        // Ratios of successive steps past the first few are T^(1/31) ≈ 1.31.
        let r = s[s.len() - 1] as f64 / s[s.len() - 2] as f64;
        assert!((r - 4000f64.powf(1.0 / 31.0)).abs() < 0.01, "{r}");
    }
}
