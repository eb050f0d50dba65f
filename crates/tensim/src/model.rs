//! A validated model: input size plus a stack of layers whose sizes chain. Metrics only ever see
//! a `Model`, so every shape and value check happens once, here or in [`crate::io`].

use std::sync::Arc;

use crate::arch::{
    Arch, AttentionSpec, BilinearSpec, InputSpec, LayerSpec, LinearSpec, Rotary, FORMAT,
};
use crate::distribution::PositionLaw;
use crate::error::{Error, Result};
use crate::layers::{Layer, PaddedLayer};
use crate::linalg::{pad_ones, unpad, Mat, MatRef, Par};

/// A tensor-network model, and the law of its input positions where that is not i.i.d.
/// `N(0, I)` ([`PositionLaw`]: per-position statistics, which no layer can fold in).
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    input: InputSpec,
    layers: Vec<Layer>,
    law: Option<Arc<PositionLaw>>,
}

impl Model {
    /// Build a model from layers, checking that sizes chain, residuals fit and values are finite.
    pub fn new(input_dim: usize, n_ctx: usize, layers: Vec<Layer>) -> Result<Model> {
        if layers.is_empty() {
            return Err(Error::Model("a model needs at least one layer".into()));
        }
        if input_dim == 0 || n_ctx == 0 {
            return Err(Error::Model(
                "input dim and n_ctx must be at least 1".into(),
            ));
        }
        let mut dim = input_dim;
        for (i, layer) in layers.iter().enumerate() {
            if layer.in_dim() != dim {
                return Err(Error::Model(format!(
                    "layer {i} ({}) takes inputs of size {}, but its input has size {dim}",
                    layer.kind(),
                    layer.in_dim()
                )));
            }
            match layer {
                Layer::Bilinear(b) => check_bilinear(i, b)?,
                Layer::Attention(a) => check_attention(i, a)?,
                Layer::Linear(_) => {}
            }
            let residual = match layer {
                Layer::Bilinear(b) => b.residual,
                Layer::Attention(a) => a.residual,
                Layer::Linear(_) => None,
            };
            if let Some(r) = residual.filter(|r| !r.scale.is_finite()) {
                return Err(Error::Model(format!(
                    "layer {i} ({}): residual scale {} is not finite",
                    layer.kind(),
                    r.scale
                )));
            }
            for (role, values) in layer.parameters() {
                if let Some(k) = values.iter().position(|v| !v.is_finite()) {
                    return Err(Error::Model(format!(
                        "layer {i} ({}): {role} has a non-finite value ({}) at flat index {k}",
                        layer.kind(),
                        values[k]
                    )));
                }
            }
            dim = layer.out_dim();
        }
        Ok(Model {
            input: InputSpec {
                dim: input_dim,
                n_ctx,
            },
            layers,
            law: None,
        })
    }

    /// The same model read with its positions drawn from `law` (of its `n_ctx` and input size;
    /// for models with attention: the metrics of position-wise layers read `N(0, I)`).
    pub fn with_law(mut self, law: Arc<PositionLaw>) -> Model {
        assert_eq!((law.n_ctx(), law.dim()), (self.input.n_ctx, self.input.dim));
        assert!(
            self.first_attention().is_some(),
            "a law of positions needs attention"
        );
        self.law = Some(law);
        self
    }

    /// Other layers of the same input (and input law).
    pub fn with_layers(&self, layers: Vec<Layer>) -> Result<Model> {
        let m = Model::new(self.in_dim(), self.input.n_ctx, layers)?;
        Ok(match &self.law {
            Some(law) => m.with_law(law.clone()),
            None => m,
        })
    }

    /// The law of the input positions; `None`: i.i.d. `N(0, I)`.
    pub fn law(&self) -> Option<&PositionLaw> {
        self.law.as_deref()
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn input(&self) -> &InputSpec {
        &self.input
    }

    pub fn in_dim(&self) -> usize {
        self.input.dim
    }

    pub fn out_dim(&self) -> usize {
        self.layers.last().map_or(self.input.dim, Layer::out_dim)
    }

    /// Number of bilinear layers (depth of the binary tree of the unrolled tensor).
    pub fn n_bilinear(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l, Layer::Bilinear(_)))
            .count()
    }

    /// Index of the first attention layer, if any.
    pub fn first_attention(&self) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| matches!(l, Layer::Attention(_)))
    }

    /// `Ok` if every layer acts position-wise (linear, bilinear): what the weight-space
    /// recursion of `what` covers.
    pub fn require_position_wise(&self, what: &str) -> Result<()> {
        match self.first_attention() {
            None => Ok(()),
            Some(i) => Err(Error::Invalid(format!(
                "{what} covers linear and bilinear layers; layer {i} is attention (use the \
                 gaussian, behavioral or matrix metric)"
            ))),
        }
    }

    /// Polynomial degree of the model in its input (an upper bound: the product of the layers'
    /// degrees); `None` beyond `u64` (64 bilinear layers or more).
    pub fn degree(&self) -> Option<u64> {
        self.layers
            .iter()
            .try_fold(1u64, |d, l| d.checked_mul(l.degree() as u64))
    }

    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.layers.iter().map(Layer::param_count).sum()
    }

    /// Batched forward pass: rows of `x` are positions, `n_ctx` consecutive rows one input
    /// (attention mixes the positions of an input; every other layer acts position-wise).
    pub fn forward(&self, x: MatRef<'_, f64>, par: Par) -> Mat<f64> {
        let n = self.input.n_ctx;
        let mut y = self.layers[0].forward(x, n, par);
        for layer in &self.layers[1..] {
            y = layer.forward(y.as_ref(), n, par);
        }
        y
    }

    /// Forward pass through the padded tensor network: `x̂ ↦ Ŵx̂`, `x̂ ↦ D̂(L̂x̂ ∘ R̂x̂)`.
    /// Equal to [`forward`](Self::forward) up to rounding; the tests pin that.
    pub fn forward_padded(&self, x: MatRef<'_, f64>, par: Par) -> Mat<f64> {
        let mut y = pad_ones(x);
        for node in self.padded() {
            y = match node {
                PaddedLayer::Linear(l) => l.apply(y.as_ref(), par),
                PaddedLayer::Bilinear(b) => b.apply(y.as_ref(), y.as_ref(), false, par),
            };
        }
        unpad(y.as_ref())
    }

    /// The padded nodes, in order.
    pub fn padded(&self) -> Vec<PaddedLayer> {
        self.layers.iter().map(Layer::padded).collect()
    }

    /// Canonical tensor name of a parameter: `layers.{i}.{role}`.
    pub fn tensor_name(layer: usize, role: &str) -> String {
        format!("layers.{layer}.{role}")
    }

    /// The architecture description with canonical tensor names (what [`crate::io::save`]
    /// writes).
    pub fn arch(&self) -> Arch {
        let name =
            |i: usize, role: &str, present: bool| present.then(|| Model::tensor_name(i, role));
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| match layer {
                Layer::Linear(l) => LayerSpec::Linear(LinearSpec {
                    weight: Model::tensor_name(i, "weight"),
                    bias: name(i, "bias", l.bias.is_some()),
                }),
                Layer::Bilinear(b) => LayerSpec::Bilinear(BilinearSpec {
                    left: name(i, "left", true),
                    right: name(i, "right", true),
                    down: name(i, "down", b.down.is_some()),
                    left_bias: name(i, "left_bias", b.left_bias.is_some()),
                    right_bias: name(i, "right_bias", b.right_bias.is_some()),
                    down_bias: name(i, "down_bias", b.down_bias.is_some()),
                    residual: b.residual,
                    ..Default::default()
                }),
                Layer::Attention(a) => LayerSpec::Attention(AttentionSpec {
                    n_head: a.n_head,
                    q1: Model::tensor_name(i, "q1"),
                    k1: Model::tensor_name(i, "k1"),
                    q2: Model::tensor_name(i, "q2"),
                    k2: Model::tensor_name(i, "k2"),
                    v: Model::tensor_name(i, "v"),
                    o: Model::tensor_name(i, "o"),
                    q1_bias: name(i, "q1_bias", a.q1_bias.is_some()),
                    k1_bias: name(i, "k1_bias", a.k1_bias.is_some()),
                    q2_bias: name(i, "q2_bias", a.q2_bias.is_some()),
                    k2_bias: name(i, "k2_bias", a.k2_bias.is_some()),
                    mask: a.mask,
                    rotary: a.rotary.map(|base| Rotary { base }),
                    residual: a.residual,
                }),
            })
            .collect();
        Arch {
            format: FORMAT.to_string(),
            input: self.input.clone(),
            layers,
            prepare: Vec::new(),
            named: None,
        }
    }
}

fn check_attention(i: usize, a: &crate::layers::Attention) -> Result<()> {
    let d = a.dim();
    let bad = |what: String| Err(Error::Model(format!("layer {i} (attention): {what}")));
    if a.n_head == 0 || !d.is_multiple_of(a.n_head) {
        return bad(format!("n_head {} does not divide d_model {d}", a.n_head));
    }
    if a.rotary.is_some() && !a.head_size().is_multiple_of(2) {
        return bad(format!(
            "rotary positions need an even head size, got {}",
            a.head_size()
        ));
    }
    for (role, w) in a.matrices() {
        if (w.nrows(), w.ncols()) != (d, d) {
            return bad(format!(
                "{role} has shape [{}, {}], expected [{d}, {d}]",
                w.nrows(),
                w.ncols()
            ));
        }
    }
    for (role, b) in a.biases() {
        if let Some(b) = b {
            if b.len() != d {
                return bad(format!("{role} has {} entries, expected {d}", b.len()));
            }
        }
    }
    Ok(())
}

fn check_bilinear(i: usize, b: &crate::layers::Bilinear) -> Result<()> {
    let h = b.hidden();
    let bad = |what: String| Err(Error::Model(format!("layer {i} (bilinear): {what}")));
    if b.right.nrows() != h || b.right.ncols() != b.in_dim() {
        return bad(format!(
            "right has shape [{}, {}], expected [{h}, {}] (the shape of left)",
            b.right.nrows(),
            b.right.ncols(),
            b.in_dim()
        ));
    }
    if let Some(d) = &b.down {
        if d.ncols() != h {
            return bad(format!(
                "down has shape [{}, {}], expected [out, {h}]",
                d.nrows(),
                d.ncols()
            ));
        }
    }
    for (role, v, want) in [
        ("left_bias", &b.left_bias, h),
        ("right_bias", &b.right_bias, h),
        ("down_bias", &b.down_bias, b.out_dim()),
    ] {
        if let Some(v) = v {
            if v.len() != want {
                return bad(format!("{role} has length {}, expected {want}", v.len()));
            }
        }
    }
    if b.residual.is_some() && b.out_dim() != b.in_dim() {
        return bad(format!(
            "a residual needs equal input and output sizes, but input is {} and output is {}",
            b.in_dim(),
            b.out_dim()
        ));
    }
    Ok(())
}
