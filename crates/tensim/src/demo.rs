//! Built-in example models: random bilinear stacks (PyTorch default initialisation) and the
//! "symmetries" example, a model next to re-parametrised, perturbed and unrelated versions of it.

use faer::linalg::solvers::DenseSolveCore;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::arch::{Residual, ResidualMode};
use crate::error::Result;
use crate::layers::{Attention, Bilinear, Layer, Linear};
use crate::linalg::Mat;
use crate::model::Model;
use crate::reparam;

/// Shape of a random `embed → bilinear × n → head` stack.
#[derive(Clone, Debug)]
pub struct StackShape {
    pub d_in: usize,
    /// Residual-stream width (output of the embedding).
    pub d_model: usize,
    /// Hidden width of each bilinear layer; 0 with `heads > 0`: an attention-only block.
    pub hidden: Vec<usize>,
    pub d_out: usize,
    pub residual: Option<Residual>,
    pub bias: bool,
    /// A linear embedding `d_in → d_model` first (else the bilinear layers read the input).
    pub embed: bool,
    /// Each bilinear layer has a `down` projection back to the stream (else it outputs its
    /// hidden product).
    pub down: bool,
    /// Attention heads: with `heads > 0` each bilinear layer is preceded by a causal rotary
    /// bilinear attention layer (a tensor transformer block; needs `embed` and `down`).
    pub heads: usize,
    /// Sequence positions of the input.
    pub n_ctx: usize,
}

/// One standard Gaussian draw.
pub fn gauss(rng: &mut impl Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// `U(−1/√fan_in, 1/√fan_in)` (PyTorch's `nn.Linear` default).
pub fn torch_init(rows: usize, cols: usize, rng: &mut impl Rng) -> Mat<f64> {
    let b = 1.0 / (cols as f64).sqrt();
    Mat::from_fn(rows, cols, |_, _| rng.random_range(-b..b))
}

/// A random stack with PyTorch initialisation; biases (if any) are small Gaussians.
pub fn random_stack<R: Rng>(shape: &StackShape, rng: &mut R) -> Result<Model> {
    // Parameters (an upper bound), checked before any is drawn.
    let stream = if shape.embed {
        shape.d_model
    } else {
        shape.d_in
    } as f64;
    let attention = if shape.heads > 0 {
        6.0 * stream * stream
    } else {
        0.0
    };
    let per_layer = |h: usize| 3.0 * h as f64 * stream.max(h as f64) + attention;
    let params = shape.d_in as f64 * stream
        + shape.hidden.iter().map(|&h| per_layer(h)).sum::<f64>()
        + stream.max(shape.hidden.iter().copied().max().unwrap_or(0) as f64) * shape.d_out as f64;
    crate::budget::check("the random model's parameters", 2.0 * params)?;
    let bias = |n: usize, rng: &mut R| -> Option<Vec<f64>> {
        shape
            .bias
            .then(|| (0..n).map(|_| 0.3 * gauss(rng)).collect())
    };
    let mut layers = vec![];
    let mut dim = shape.d_in;
    if shape.embed {
        layers.push(Layer::Linear(Linear {
            weight: torch_init(shape.d_model, dim, rng),
            bias: bias(shape.d_model, rng),
        }));
        dim = shape.d_model;
    }
    for &h in &shape.hidden {
        if shape.heads > 0 {
            let b = |rng: &mut R| bias(dim, rng);
            let (q1_bias, k1_bias, q2_bias, k2_bias) = (b(rng), b(rng), b(rng), b(rng));
            layers.push(Layer::Attention(Box::new(Attention {
                n_head: shape.heads,
                q1: torch_init(dim, dim, rng),
                k1: torch_init(dim, dim, rng),
                q2: torch_init(dim, dim, rng),
                k2: torch_init(dim, dim, rng),
                v: torch_init(dim, dim, rng),
                o: torch_init(dim, dim, rng),
                q1_bias,
                k1_bias,
                q2_bias,
                k2_bias,
                mask: crate::arch::Mask::Causal,
                rotary: Some(10_000.0),
                residual: shape.residual,
            })));
        }
        if h == 0 && shape.heads > 0 {
            continue;
        }
        let out = if shape.down { dim } else { h };
        layers.push(Layer::Bilinear(Bilinear {
            left: torch_init(h, dim, rng),
            right: torch_init(h, dim, rng),
            down: shape.down.then(|| torch_init(out, h, rng)),
            left_bias: bias(h, rng),
            right_bias: bias(h, rng),
            down_bias: bias(out, rng),
            residual: if out == dim { shape.residual } else { None },
        }));
        dim = out;
    }
    layers.push(Layer::Linear(Linear {
        weight: torch_init(shape.d_out, dim, rng),
        bias: bias(shape.d_out, rng),
    }));
    Model::new(shape.d_in, shape.n_ctx, layers)
}

/// One model of the symmetries example.
pub struct Example {
    pub name: &'static str,
    pub description: &'static str,
    pub model: Model,
}

/// A 2-layer residual bilinear model `A` and five others to compare it with.
pub fn symmetries(seed: u64) -> Result<Vec<Example>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let shape = StackShape {
        d_in: 16,
        d_model: 12,
        hidden: vec![24, 24],
        d_out: 4,
        residual: Some(Residual {
            mode: ResidualMode::Lerp,
            scale: 0.5,
        }),
        bias: true,
        embed: true,
        down: true,
        heads: 0,
        n_ctx: 1,
    };
    let a = random_stack(&shape, &mut rng)?;

    // Same function, same architecture: permute, rescale and L/R-swap the hidden units.
    let mut b = a.clone();
    for i in [1, 2] {
        let h = shape.hidden[i - 1];
        let mut perm: Vec<usize> = (0..h).collect();
        perm.reverse();
        let alpha: Vec<f64> = (0..h).map(|_| rng.random_range(0.3..3.0)).collect();
        let beta: Vec<f64> = (0..h).map(|_| rng.random_range(0.3..3.0)).collect();
        let swap: Vec<bool> = (0..h).map(|_| rng.random_bool(0.5)).collect();
        b = reparam::permute_hidden(&b, i, &perm)?;
        b = reparam::rescale_hidden(&b, i, &alpha, &beta)?;
        b = reparam::swap_left_right(&b, i, &swap)?;
    }

    // Same function, different architecture: residuals folded into hidden units, then an affine
    // change of basis of the residual stream before and between the bilinear layers.
    let mut c = reparam::fold_residual(&reparam::fold_residual(&a, 1)?, 2)?;
    for i in [0, 1] {
        let d = shape.d_model;
        let m = Mat::from_fn(d, d, |p, q| {
            0.4 * rng.random_range(-1.0..1.0) + if p == q { 2.0 } else { 0.0 }
        });
        let minv = m.partial_piv_lu().inverse();
        let shift: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        c = reparam::change_basis(&c, i, &m, &minv, &shift)?;
    }

    // A nearby model: every weight perturbed by 10 % of its layer's scale.
    let mut noise = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let d = perturb(&a, 0.1, &mut noise)?;
    let e = perturb(&a, 0.5, &mut noise)?;
    let f = random_stack(&shape, &mut rng)?;
    Ok(vec![
        Example { name: "A", description: "16→12, two residual bilinear layers (hidden 24), head →4", model: a },
        Example { name: "B", description: "A with hidden units permuted, rescaled and L/R-swapped (same function)", model: b },
        Example { name: "C", description: "A with residuals folded into units and the residual stream re-based (same function, other shapes)", model: c },
        Example { name: "D", description: "A with 10 % weight noise", model: d },
        Example { name: "E", description: "A with 50 % weight noise", model: e },
        Example { name: "F", description: "an unrelated random model of A's shape", model: f },
    ])
}

/// Add Gaussian noise of relative size `level` (per layer, relative to the weights' RMS).
fn perturb(model: &Model, level: f64, rng: &mut impl Rng) -> Result<Model> {
    let mut noisy = |m: &Mat<f64>| -> Mat<f64> {
        let rms = (m.squared_norm_l2() / (m.nrows() * m.ncols()).max(1) as f64).sqrt();
        Mat::from_fn(m.nrows(), m.ncols(), |i, j| {
            m[(i, j)] + level * rms * gauss(&mut *rng)
        })
    };
    let layers = model
        .layers()
        .iter()
        .map(|l| match l {
            Layer::Linear(x) => Layer::Linear(Linear {
                weight: noisy(&x.weight),
                bias: x.bias.clone(),
            }),
            Layer::Bilinear(x) => Layer::Bilinear(Bilinear {
                left: noisy(&x.left),
                right: noisy(&x.right),
                down: x.down.as_ref().map(&mut noisy),
                ..x.clone()
            }),
            Layer::Attention(x) => Layer::Attention(Box::new(Attention {
                q1: noisy(&x.q1),
                k1: noisy(&x.k1),
                q2: noisy(&x.q2),
                k2: noisy(&x.k2),
                v: noisy(&x.v),
                o: noisy(&x.o),
                ..(**x).clone()
            })),
        })
        .collect();
    model.with_layers(layers)
}
