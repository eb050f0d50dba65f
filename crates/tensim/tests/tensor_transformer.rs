//! Tensor similarity of models with attention (the general network recursion): it equals the
//! Gram recursion on bilinear stacks, a brute-force inner product of the materialised,
//! leg-symmetrised attention tensors, and keeps the laws (self 1, symmetry, head permutation,
//! q1/k1 ↔ q2/k2 swap).

mod common;

use common::{all_permutations, random_attention, uniform};
use rand::SeedableRng;
use tensim::arch::{Mask, Residual, ResidualMode};
use tensim::einsum::Tensor;
use tensim::layers::{Attention, Bilinear, Layer, Linear};
use tensim::linalg::{Mat, Par};
use tensim::metrics::{tensor, Options};
use tensim::Model;

fn mat(rng: &mut rand::rngs::StdRng, r: usize, c: usize) -> Mat<f64> {
    uniform(rng, r, c)
}

fn attention(
    rng: &mut rand::rngs::StdRng,
    d: usize,
    heads: usize,
    bias: bool,
    residual: Option<Residual>,
) -> Attention {
    random_attention(rng, d, heads, bias, Some(10.0), Mask::Causal, residual)
}

#[test]
fn the_network_recursion_equals_the_gram_recursion_on_bilinear_stacks() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let lerp = Some(Residual {
        mode: ResidualMode::Lerp,
        scale: 0.4,
    });
    let model = |rng: &mut rand::rngs::StdRng| {
        let bil = |rng: &mut rand::rngs::StdRng| {
            Layer::Bilinear(Bilinear {
                left: mat(rng, 5, 4),
                right: mat(rng, 5, 4),
                down: Some(mat(rng, 4, 5)),
                left_bias: Some(vec![0.1, -0.2, 0.3, 0.0, 0.5]),
                right_bias: None,
                down_bias: Some(vec![0.2, 0.1, -0.1, 0.3]),
                residual: lerp,
            })
        };
        let layers = vec![
            Layer::Linear(Linear {
                weight: mat(rng, 4, 3),
                bias: Some(vec![0.1, 0.2, 0.3, 0.4]),
            }),
            bil(rng),
            bil(rng),
            Layer::Linear(Linear {
                weight: mat(rng, 2, 4),
                bias: None,
            }),
        ];
        Model::new(3, 1, layers).unwrap()
    };
    let (a, b) = (model(&mut rng), model(&mut rng));
    let opts = Options {
        per_output: false,
        per_tensor: false,
        par: Par::Seq,
    };
    let gram = tensor::similarity(&a, &b, &opts).unwrap();
    let net = tensor::network_similarity(&a, &b).unwrap();
    assert!(
        (gram.similarity - net.similarity).abs() < 1e-12,
        "{} vs {}",
        gram.similarity,
        net.similarity
    );
    assert!(
        (gram.inner - net.inner).abs() < 1e-10 * gram.inner.abs(),
        "{} vs {}",
        gram.inner,
        net.inner
    );
}

/// The layer's tensors at `n` positions, materialised: `ℐ[(t,o);(p,i)]` and the active term
/// `𝒜[(t,o); leg₀, …, leg₄]` (legs flattened `(p, i)`), evaluated at one-hot inputs.
fn dense(a: &Attention, n: usize) -> (Vec<f64>, Vec<f64>) {
    let net = a.network(n);
    let w = a.dim() + 1;
    let big = n * w;
    let one_hot = |k: usize| {
        let mut t = Tensor::zeros(vec![n, w]);
        t.data[k] = 1.0;
        t
    };
    let zero = Tensor::zeros(vec![n, w]);
    let mut id = vec![0.0; big * big];
    for k in 0..big {
        // With leg 0 = e_k and the active legs zero, only the identity term remains.
        let x = one_hot(k);
        let y = net.apply([&x, &zero, &zero, &zero, &zero]);
        for (q, v) in y.data.iter().enumerate() {
            id[q * big + k] = *v;
        }
    }
    let mut act = vec![0.0; big.pow(6)];
    let basis: Vec<Tensor> = (0..big).map(one_hot).collect();
    for idx in 0..big.pow(5) {
        let legs: Vec<usize> = (0..5)
            .map(|l| (idx / big.pow(4 - l as u32)) % big)
            .collect();
        let y = net.apply([
            &basis[legs[0]],
            &basis[legs[1]],
            &basis[legs[2]],
            &basis[legs[3]],
            &basis[legs[4]],
        ]);
        for (q, v) in y.data.iter().enumerate() {
            // Subtract the identity term's part (it reads leg 0).
            act[q * big.pow(5) + idx] = v - id[q * big + legs[0]];
        }
    }
    (id, act)
}

/// `⟨ℐ_a, ℐ_b⟩ + ⟨P 𝒜_a, P 𝒜_b⟩` over data outputs (`o ≥ 1`), `P` the average over the 120 leg
/// permutations.
fn brute(a: &Attention, b: &Attention, n: usize) -> f64 {
    let (w, big) = (a.dim() + 1, n * (a.dim() + 1));
    let ((ia, aa), (ib, ab)) = (dense(a, n), dense(b, n));
    let data_rows: Vec<usize> = (0..big).filter(|q| q % w != 0).collect();
    let mut total: f64 = data_rows
        .iter()
        .map(|&q| {
            (0..big)
                .map(|k| ia[q * big + k] * ib[q * big + k])
                .sum::<f64>()
        })
        .sum();
    let perms = all_permutations(5);
    let sym = |t: &[f64], q: usize, idx: usize| -> f64 {
        let legs: Vec<usize> = (0..5)
            .map(|l| (idx / big.pow(4 - l as u32)) % big)
            .collect();
        perms
            .iter()
            .map(|p| {
                let j = p.iter().fold(0, |acc, &l| acc * big + legs[l]);
                t[q * big.pow(5) + j]
            })
            .sum::<f64>()
            / 120.0
    };
    for &q in &data_rows {
        for idx in 0..big.pow(5) {
            total += sym(&aa, q, idx) * ab[q * big.pow(5) + idx];
        }
    }
    total
}

#[test]
fn one_attention_layer_equals_the_brute_force_symmetrised_inner_product() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let lerp = Some(Residual {
        mode: ResidualMode::Lerp,
        scale: 0.5,
    });
    let (a, b) = (
        attention(&mut rng, 2, 1, true, lerp),
        attention(&mut rng, 2, 1, true, lerp),
    );
    let n = 2;
    let want = brute(&a, &b, n);
    let (ma, mb) = (
        Model::new(2, n, vec![Layer::Attention(Box::new(a))]).unwrap(),
        Model::new(2, n, vec![Layer::Attention(Box::new(b))]).unwrap(),
    );
    let got = tensor::network_similarity(&ma, &mb).unwrap();
    assert!(
        (got.inner - want).abs() < 1e-10 * want.abs().max(1.0),
        "{} vs {want}",
        got.inner
    );
    // The independent-legs Monte Carlo covers position-wise layers: a refusal, not a panic.
    let e = tensim::montecarlo::verify(&ma, &mb, 100, 0, Par::Seq).unwrap_err();
    assert!(e.to_string().contains("layer 0 is attention"), "{e}");
}

#[test]
fn laws_self_symmetry_head_permutation_and_score_pair_swap() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let lerp = Some(Residual {
        mode: ResidualMode::Lerp,
        scale: 0.5,
    });
    let model = |att: Attention, head: &Mat<f64>| {
        Model::new(
            4,
            2,
            vec![
                Layer::Attention(Box::new(att)),
                Layer::Linear(Linear {
                    weight: head.clone(),
                    bias: None,
                }),
            ],
        )
        .unwrap()
    };
    let head = mat(&mut rng, 3, 4);
    let a = attention(&mut rng, 4, 2, true, lerp);
    let other = model(attention(&mut rng, 4, 2, true, lerp), &head);
    let swap = |w: &Mat<f64>| Mat::from_fn(4, 4, |i, j| w[((i + 2) % 4, j)]);
    let swap_b =
        |b: &Option<Vec<f64>>| b.as_ref().map(|v| (0..4).map(|i| v[(i + 2) % 4]).collect());
    let same = Attention {
        q1: swap(&a.q2),
        k1: swap(&a.k2),
        q2: swap(&a.q1),
        k2: swap(&a.k1),
        q1_bias: swap_b(&a.q2_bias),
        k1_bias: swap_b(&a.k2_bias),
        q2_bias: swap_b(&a.q1_bias),
        k2_bias: swap_b(&a.k1_bias),
        v: swap(&a.v),
        o: Mat::from_fn(4, 4, |i, j| a.o[(i, (j + 2) % 4)]),
        ..a.clone()
    };
    let (ma, ms) = (model(a, &head), model(same, &head));
    let s = |x: &Model, y: &Model| tensor::network_similarity(x, y).unwrap().similarity;
    assert!((s(&ma, &ma) - 1.0).abs() < 1e-12);
    assert!(
        (s(&ma, &ms) - 1.0).abs() < 1e-10,
        "heads and score pairs swapped: {}",
        s(&ma, &ms)
    );
    assert!((s(&ma, &other) - s(&other, &ma)).abs() < 1e-12);
    assert!((s(&ms, &other) - s(&ma, &other)).abs() < 1e-10);
    assert!(s(&ma, &other).abs() < 0.99);
    // Through the metric dispatch too.
    let opts = Options {
        per_output: false,
        per_tensor: false,
        par: Par::Seq,
    };
    assert!(
        (tensor::similarity(&ma, &other, &opts).unwrap().similarity - s(&ma, &other)).abs() < 1e-15
    );
}
