//! Components of a tensor-network model, one folder per kind. Each owns its forward pass, its
//! padded (homogenised) node or tensor-network form, its Gram update (`gram.rs`, tensor
//! similarity) and its Gaussian moment update (`moment.rs` or `moment/`); the engine that chains
//! the moment updates is `propagate.rs`.
//!
//! | kind | forward, padded form | Gram update | moment update |
//! |---|---|---|---|
//! | linear | `linear/mod.rs` | `linear/gram.rs` | `linear/moment.rs` |
//! | bilinear | `bilinear/mod.rs` | `bilinear/gram.rs` | `bilinear/moment.rs` |
//! | attention | `attention/mod.rs`, `attention/network.rs` | — (symmetrised moment step) | `attention/moment/` |

pub mod attention;
pub mod bilinear;
pub mod linear;

pub use attention::Attention;
pub use bilinear::{Bilinear, PaddedBilinear};
pub use linear::{Linear, PaddedLinear};

use crate::linalg::{Mat, MatRef, Par};

/// One layer of a model.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    Linear(Linear),
    Bilinear(Bilinear),
    Attention(Box<Attention>),
}

impl Layer {
    pub fn in_dim(&self) -> usize {
        match self {
            Layer::Linear(l) => l.in_dim(),
            Layer::Bilinear(b) => b.in_dim(),
            Layer::Attention(a) => a.dim(),
        }
    }

    pub fn out_dim(&self) -> usize {
        match self {
            Layer::Linear(l) => l.out_dim(),
            Layer::Bilinear(b) => b.out_dim(),
            Layer::Attention(a) => a.dim(),
        }
    }

    /// Polynomial degree of the layer in its input.
    pub fn degree(&self) -> u32 {
        match self {
            Layer::Linear(_) => 1,
            Layer::Bilinear(_) => 2,
            Layer::Attention(_) => 5,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Linear(_) => "linear",
            Layer::Bilinear(_) => "bilinear",
            Layer::Attention(_) => "attention",
        }
    }

    /// Batched forward pass: rows are positions, `n_ctx` consecutive rows one input (only
    /// attention mixes positions).
    pub fn forward(&self, x: MatRef<'_, f64>, n_ctx: usize, par: Par) -> Mat<f64> {
        match self {
            Layer::Linear(l) => l.forward(x, par),
            Layer::Bilinear(b) => b.forward(x, par),
            Layer::Attention(a) => a.forward(x, n_ctx, par),
        }
    }

    /// The layer's padded node (position-wise layers; the weight-space metrics refuse models
    /// with attention before asking).
    pub fn padded(&self) -> PaddedLayer {
        match self {
            Layer::Linear(l) => PaddedLayer::Linear(l.padded()),
            Layer::Bilinear(b) => PaddedLayer::Bilinear(b.padded()),
            Layer::Attention(_) => unreachable!("attention has no position-wise padded node"),
        }
    }

    /// The layer as a sum of multilinear terms at `n_ctx` positions (MATH.md §5.2).
    pub fn terms(&self, n_ctx: usize) -> Vec<crate::wick::Term> {
        match self {
            Layer::Linear(l) => vec![l.padded().term()],
            Layer::Bilinear(b) => vec![b.padded().term()],
            Layer::Attention(a) => a.network(n_ctx).terms(),
        }
    }

    /// Number of scalar parameters (weights and biases).
    pub fn param_count(&self) -> usize {
        let len = |v: &Option<Vec<f64>>| v.as_ref().map_or(0, Vec::len);
        match self {
            Layer::Linear(l) => l.weight.nrows() * l.weight.ncols() + len(&l.bias),
            Layer::Bilinear(b) => {
                2 * b.hidden() * b.in_dim()
                    + b.down.as_ref().map_or(0, |d| d.nrows() * d.ncols())
                    + len(&b.left_bias)
                    + len(&b.right_bias)
                    + len(&b.down_bias)
            }
            Layer::Attention(a) => {
                6 * a.dim() * a.dim() + a.biases().iter().map(|(_, b)| len(b)).sum::<usize>()
            }
        }
    }

    /// The parameters in a fixed order (weights, then biases), each as `(role, row-major values)`.
    pub fn parameters(&self) -> Vec<(&'static str, Vec<f64>)> {
        use crate::linalg::to_row_major;
        let mut out = Vec::new();
        let mut push = |role: &'static str, v: Option<Vec<f64>>| {
            if let Some(v) = v {
                out.push((role, v));
            }
        };
        match self {
            Layer::Linear(l) => {
                push("weight", Some(to_row_major(l.weight.as_ref())));
                push("bias", l.bias.clone());
            }
            Layer::Bilinear(b) => {
                push("left", Some(to_row_major(b.left.as_ref())));
                push("right", Some(to_row_major(b.right.as_ref())));
                push("down", b.down.as_ref().map(|d| to_row_major(d.as_ref())));
                push("left_bias", b.left_bias.clone());
                push("right_bias", b.right_bias.clone());
                push("down_bias", b.down_bias.clone());
            }
            Layer::Attention(a) => {
                for (role, w) in a.matrices() {
                    push(role, Some(to_row_major(w.as_ref())));
                }
                for (role, b) in a.biases() {
                    push(role, b.clone());
                }
            }
        }
        out
    }
}

/// A layer as a node of the tensor network.
#[derive(Clone, Debug)]
pub enum PaddedLayer {
    Linear(PaddedLinear),
    Bilinear(PaddedBilinear),
}

/// `Ŵ_k ⋯ Ŵ_1`: the product of consecutive linear nodes (`None` for none).
pub fn compose_linear(nodes: &[PaddedLayer]) -> Option<Mat<f64>> {
    nodes.iter().fold(None, |acc, n| {
        let PaddedLayer::Linear(l) = n else {
            unreachable!("only linear nodes between bilinear ones")
        };
        Some(match acc {
            None => l.w.clone(),
            Some(m) => crate::linalg::mul(l.w.as_ref(), m.as_ref(), Par::Seq),
        })
    })
}
