//! What an observed similarity is worth (`--null K`): the same metric between `K` pairs of
//! independent initialisations of the architecture, and the observed value's z-score
//! `z = (s − mean) / std` against them.

use rand::{Rng, RngExt, SeedableRng};
use serde::Serialize;

use crate::demo::torch_init;
use crate::error::{Error, Result};
use crate::layers::{Attention, Bilinear, Layer, Linear};
use crate::model::Model;

/// Similarities of independently initialised pairs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Null {
    pub pairs: usize,
    pub seed: u64,
    pub mean: f64,
    /// Sample standard deviation (`K − 1` normalisation).
    pub std: f64,
    pub values: Vec<f64>,
}

impl Null {
    /// `(s − mean) / std`; `None` when the null has no spread.
    pub fn z(&self, s: f64) -> Option<f64> {
        (self.std > 0.0).then(|| (s - self.mean) / self.std)
    }
}

/// `model`'s architecture with PyTorch's default initialisation: every weight and bias
/// `U(±1/√fan_in)`, `fan_in` the input size of the weight it belongs to; residual scales,
/// masks and rotary bases kept.
pub fn initialise_like<R: Rng>(model: &Model, rng: &mut R) -> Result<Model> {
    fn bias<R: Rng>(like: &Option<Vec<f64>>, fan_in: usize, rng: &mut R) -> Option<Vec<f64>> {
        let b = 1.0 / (fan_in as f64).sqrt();
        like.as_ref()
            .map(|v| v.iter().map(|_| rng.random_range(-b..b)).collect())
    }
    let init = |w: &crate::linalg::Mat<f64>, rng: &mut R| torch_init(w.nrows(), w.ncols(), rng);
    let layers = model
        .layers()
        .iter()
        .map(|layer| match layer {
            Layer::Linear(l) => Layer::Linear(Linear {
                weight: init(&l.weight, rng),
                bias: bias(&l.bias, l.in_dim(), rng),
            }),
            Layer::Bilinear(b) => Layer::Bilinear(Bilinear {
                left: init(&b.left, rng),
                right: init(&b.right, rng),
                down: b.down.as_ref().map(|d| init(d, rng)),
                left_bias: bias(&b.left_bias, b.in_dim(), rng),
                right_bias: bias(&b.right_bias, b.in_dim(), rng),
                down_bias: bias(&b.down_bias, b.hidden(), rng),
                residual: b.residual,
            }),
            Layer::Attention(a) => {
                let d = a.dim();
                Layer::Attention(Box::new(Attention {
                    q1: init(&a.q1, rng),
                    k1: init(&a.k1, rng),
                    q2: init(&a.q2, rng),
                    k2: init(&a.k2, rng),
                    v: init(&a.v, rng),
                    o: init(&a.o, rng),
                    q1_bias: bias(&a.q1_bias, d, rng),
                    k1_bias: bias(&a.k1_bias, d, rng),
                    q2_bias: bias(&a.q2_bias, d, rng),
                    k2_bias: bias(&a.k2_bias, d, rng),
                    ..(**a).clone()
                }))
            }
        })
        .collect();
    model.with_layers(layers)
}

/// `similarity` between the two models of each of `pairs` pairs of independent initialisations
/// of `model`'s architecture, drawn from `seed`.
pub fn null(
    model: &Model,
    pairs: usize,
    seed: u64,
    mut similarity: impl FnMut(&Model, &Model) -> Result<f64>,
) -> Result<Null> {
    if pairs < 2 {
        return Err(Error::Invalid(format!(
            "a null needs at least 2 pairs of initialisations, got {pairs}"
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let a = initialise_like(model, &mut rng)?;
        let b = initialise_like(model, &mut rng)?;
        values.push(similarity(&a, &b)?);
    }
    let k = pairs as f64;
    let mean = values.iter().sum::<f64>() / k;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0);
    Ok(Null {
        pairs,
        seed,
        mean,
        std: var.sqrt(),
        values,
    })
}
