//! The contraction engine against a naive contraction (a loop over every index assignment) on
//! random networks, and its error messages.

use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use tensim::einsum::{einsum, Einsum, Tensor};

/// Sum over all assignments of all indices of the product of the operands' entries.
fn naive(expr: &str, ops: &[&Tensor]) -> Tensor {
    let (lhs, rhs) = expr.split_once("->").unwrap();
    let inputs: Vec<Vec<char>> = lhs.split(',').map(|s| s.chars().collect()).collect();
    let output: Vec<char> = rhs.chars().collect();
    let mut labels: Vec<char> = vec![];
    let mut size = vec![];
    for (ix, t) in inputs.iter().zip(ops) {
        for (c, &n) in ix.iter().zip(&t.shape) {
            if !labels.contains(c) {
                labels.push(*c);
                size.push(n);
            }
        }
    }
    let at = |c: &char| labels.iter().position(|l| l == c).unwrap();
    let out_shape: Vec<usize> = output.iter().map(|c| size[at(c)]).collect();
    let mut out = Tensor::zeros(out_shape.clone());
    let total: usize = size.iter().product();
    let offset = |ix: &[char], shape: &[usize], val: &[usize]| {
        ix.iter()
            .zip(shape)
            .fold(0, |acc, (c, &n)| acc * n + val[at(c)])
    };
    let mut val = vec![0; labels.len()];
    for mut k in 0..total {
        for q in (0..labels.len()).rev() {
            val[q] = k % size[q];
            k /= size[q];
        }
        let p: f64 = inputs
            .iter()
            .zip(ops)
            .map(|(ix, t)| t.data[offset(ix, &t.shape, &val)])
            .product();
        out.data[offset(&output, &out_shape, &val)] += p;
    }
    out
}

fn random(shape: Vec<usize>, rng: &mut rand::rngs::StdRng) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| rng.random_range(-1.0..1.0)).collect())
}

/// A random network: `n_ops` operands over a pool of indices of sizes 1–4; each index lands in
/// one to three operands, and each index is kept in the output with some probability.
fn network(seed: u64, n_ops: usize) -> (String, Vec<Tensor>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pool: Vec<char> = "abcdefghij".chars().collect();
    let sizes: Vec<usize> = pool.iter().map(|_| rng.random_range(1..=4)).collect();
    let mut ix: Vec<Vec<char>> = vec![vec![]; n_ops];
    let mut out = vec![];
    for (k, &c) in pool
        .iter()
        .enumerate()
        .take(rng.random_range(3..=pool.len()))
    {
        let copies = rng.random_range(1..=3usize.min(n_ops));
        let mut who: Vec<usize> = (0..n_ops).collect();
        for _ in 0..copies {
            let w = who.remove(rng.random_range(0..who.len()));
            ix[w].push(c);
        }
        if rng.random_bool(0.3) || copies == 1 && rng.random_bool(0.5) {
            out.push(c);
        }
        let _ = k;
    }
    let ops: Vec<Tensor> = ix
        .iter()
        .map(|i| {
            let shape = i
                .iter()
                .map(|c| sizes[pool.iter().position(|p| p == c).unwrap()])
                .collect();
            random(shape, &mut rng)
        })
        .collect();
    let lhs: Vec<String> = ix.iter().map(|i| i.iter().collect()).collect();
    (
        format!("{}->{}", lhs.join(","), out.iter().collect::<String>()),
        ops,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_networks_match_the_naive_contraction(seed in 0u64..1_000_000, n_ops in 1usize..6) {
        let (expr, ops) = network(seed, n_ops);
        let refs: Vec<&Tensor> = ops.iter().collect();
        let got = einsum(&expr, &refs).unwrap();
        let want = naive(&expr, &refs);
        prop_assert_eq!(&got.shape, &want.shape, "{}", expr);
        for (g, w) in got.data.iter().zip(&want.data) {
            prop_assert!((g - w).abs() <= 1e-10 * (1.0 + w.abs()), "{}: {} vs {}", expr, g, w);
        }
    }
}

#[test]
fn familiar_contractions() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (a, b) = (random(vec![3, 4], &mut rng), random(vec![4, 5], &mut rng));
    let c = einsum("ij,jk->ik", &[&a, &b]).unwrap();
    assert_eq!(c.shape, vec![3, 5]);
    let c01: f64 = (0..4).map(|j| a.data[j] * b.data[j * 5 + 1]).sum();
    assert!((c.data[1] - c01).abs() < 1e-14);
    // Transpose, trace-free sum, outer product, batched product.
    assert_eq!(einsum("ij->ji", &[&a]).unwrap().data[1], a.data[4]);
    let s = einsum("ij->", &[&a]).unwrap();
    assert!((s.data[0] - a.data.iter().sum::<f64>()).abs() < 1e-14);
    assert_eq!(
        einsum(
            "i,j->ij",
            &[&random(vec![2], &mut rng), &random(vec![3], &mut rng)]
        )
        .unwrap()
        .shape,
        vec![2, 3]
    );
    let (x, y) = (
        random(vec![2, 3, 4], &mut rng),
        random(vec![2, 4, 5], &mut rng),
    );
    let z = einsum("bij,bjk->bik", &[&x, &y]).unwrap();
    let want = naive("bij,bjk->bik", &[&x, &y]);
    assert_eq!(z.shape, want.shape);
    assert!(z
        .data
        .iter()
        .zip(&want.data)
        .all(|(g, w)| (g - w).abs() < 1e-14));
}

#[test]
fn the_order_is_cached_per_expression_and_reused_for_other_sizes() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let e = Einsum::parse("ab,bc,cd->ad").unwrap();
    for n in [2, 7] {
        let ops: Vec<Tensor> = (0..3).map(|_| random(vec![n, n], &mut rng)).collect();
        let refs: Vec<&Tensor> = ops.iter().collect();
        let got = e.contract(&refs).unwrap();
        let want = naive("ab,bc,cd->ad", &refs);
        assert!(got
            .data
            .iter()
            .zip(&want.data)
            .all(|(g, w)| (g - w).abs() < 1e-12));
    }
}

#[test]
fn bad_expressions_and_operands_are_named() {
    let t = Tensor::zeros(vec![2, 3]);
    let msg = |r: tensim::Result<Tensor>| r.unwrap_err().to_string();
    assert!(msg(einsum("ij,jk", &[&t, &t])).contains("expected inputs->output"));
    assert!(msg(einsum("ii->i", &[&t])).contains("index 'i' repeated"));
    assert!(msg(einsum("ij->k", &[&t])).contains("output index 'k' appears in no input"));
    assert!(msg(einsum("ij,jk->ik", &[&t, &t])).contains("index 'j' has sizes 3 and 2"));
    assert!(msg(einsum("ijk->i", &[&t])).contains("expected 3 axes"));
    assert!(msg(einsum("ij,jk->ik", &[&t])).contains("1 operands for 2 inputs"));
}
