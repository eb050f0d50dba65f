//! The language model: embedding, `layers` bilinear attention layers as tensim defines them
//! (`tensim::layers::attention`: scores `σ¹σ²/h²`, q/k biases, rotary rotate-half, causal mask,
//! residual `X + s·f(X)`), and an unembedding. Before the unembedding the stream is divided by a
//! batch-wide RMS scale `r = √mean(X²)`; evaluation uses its running mean `r̄`, folded into the
//! saved unembedding (`U/r̄`), so every checkpoint is an exact tensim/1 model.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use tensim::arch::{Mask, Residual, ResidualMode};
use tensim::layers::{Attention, Layer, Linear};
use tensim::linalg::Mat;
use tensim::Model;

use crate::TrainError;

/// Shape of the language model.
#[derive(Clone, Debug, Serialize)]
pub struct LmShape {
    pub vocab: usize,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    /// Residual scale `s` of `X + s·f(X)`.
    pub residual: f64,
    pub rotary_base: f64,
}

/// One attention layer's weights (`nn.Linear` layout) and q/k biases.
struct Block {
    /// `Q₁, K₁, Q₂, K₂, V, O`.
    w: [Var; 6],
    /// Biases of `Q₁, K₁, Q₂, K₂`.
    b: [Var; 4],
}

/// The trainable model and its running RMS scale.
pub struct Lm {
    pub shape: LmShape,
    /// `V × d` (row `a` is token `a`'s embedding).
    embed: Var,
    blocks: Vec<Block>,
    /// `V × d`.
    unembed: Var,
    /// Running mean `r̄` of the batch RMS scale (momentum 0.99; the first batch sets it).
    pub rms: f64,
    /// Causal mask and rotary tables by context length.
    tables: std::cell::RefCell<Vec<(usize, Tensor, Tensor, Tensor)>>,
}

fn uniform(rows: usize, cols: usize, bound: f64, rng: &mut impl rand::Rng) -> Vec<f32> {
    let b = bound as f32;
    (0..rows * cols).map(|_| rng.random_range(-b..b)).collect()
}

/// `[f(0), …, f(N−1)]`.
fn each<const N: usize>(
    f: impl FnMut(usize) -> Result<Var, TrainError>,
) -> Result<[Var; N], TrainError> {
    let v = (0..N).map(f).collect::<Result<Vec<_>, _>>()?;
    Ok(v.try_into().map_err(|_| ()).expect("N variables"))
}

impl Lm {
    /// PyTorch's default initialisation `U(±1/√fan_in)` for every matrix and bias, the embedding
    /// `U(±1)`, drawn from `seed`.
    pub fn init(shape: &LmShape, seed: u64, dev: &Device) -> Result<Lm, TrainError> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (v, d) = (shape.vocab, shape.d_model);
        let var = |x: Vec<f32>, dims: &[usize]| -> Result<Var, TrainError> {
            Ok(Var::from_tensor(&Tensor::from_vec(x, dims, dev)?)?)
        };
        let k = 1.0 / (d as f64).sqrt();
        let embed = var(uniform(v, d, 1.0, &mut rng), &[v, d])?;
        let mut blocks = Vec::new();
        for _ in 0..shape.layers {
            blocks.push(Block {
                w: each(|_| var(uniform(d, d, k, &mut rng), &[d, d]))?,
                b: each(|_| var(uniform(1, d, k, &mut rng), &[d]))?,
            });
        }
        let unembed = var(uniform(v, d, k, &mut rng), &[v, d])?;
        Ok(Lm {
            shape: shape.clone(),
            embed,
            blocks,
            unembed,
            rms: 0.0,
            tables: Default::default(),
        })
    }

    /// The same model with its weights in `dtype` (`F64`: evaluation at tensim's precision).
    pub fn to_dtype(&self, dtype: DType) -> Result<Lm, TrainError> {
        let cast = |v: &Var| -> Result<Var, TrainError> {
            Ok(Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?)
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    w: each(|i| cast(&b.w[i]))?,
                    b: each(|i| cast(&b.b[i]))?,
                })
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(Lm {
            shape: self.shape.clone(),
            embed: cast(&self.embed)?,
            blocks,
            unembed: cast(&self.unembed)?,
            rms: self.rms,
            tables: Default::default(),
        })
    }

    /// Every trainable variable.
    pub fn vars(&self) -> Vec<Var> {
        let mut v = vec![self.embed.clone(), self.unembed.clone()];
        for b in &self.blocks {
            v.extend(b.w.iter().cloned());
            v.extend(b.b.iter().cloned());
        }
        v
    }

    /// Causal mask `(n, n)` and rotary `cos`, `sin` `(n, h/2)`: `cos(t·base^(−2j/h))`.
    fn tables(&self, n: usize, dev: &Device) -> Result<(Tensor, Tensor, Tensor), TrainError> {
        if let Some((_, m, c, s)) = self.tables.borrow().iter().find(|e| e.0 == n) {
            return Ok((m.clone(), c.clone(), s.clone()));
        }
        let h = self.shape.d_model / self.shape.heads;
        let dtype = self.embed.dtype();
        let angle =
            |t: usize, j: usize| t as f64 * self.shape.rotary_base.powf(-2.0 * j as f64 / h as f64);
        let table = |f: fn(f64) -> f64| -> Result<Tensor, TrainError> {
            let v: Vec<f32> = (0..n * h / 2)
                .map(|k| f(angle(k / (h / 2), k % (h / 2))) as f32)
                .collect();
            Ok(Tensor::from_vec(v, (n, h / 2), dev)?.to_dtype(dtype)?)
        };
        let entry = (
            Tensor::tril2(n, dtype, dev)?,
            table(f64::cos)?,
            table(f64::sin)?,
        );
        self.tables
            .borrow_mut()
            .push((n, entry.0.clone(), entry.1.clone(), entry.2.clone()));
        Ok(entry)
    }

    /// The stream after the attention layers, `(rows·n, d)`, for tokens `(rows, n)`.
    fn stream(&self, tokens: &Tensor) -> Result<Tensor, TrainError> {
        let (rows, n) = tokens.dims2()?;
        let (d, heads) = (self.shape.d_model, self.shape.heads);
        let h = d / heads;
        let (mask, cos, sin) = self.tables(n, tokens.device())?;
        let mut x = self
            .embed
            .as_tensor()
            .index_select(&tokens.flatten_all()?, 0)?;
        for block in &self.blocks {
            // `x Wᵢᵀ (+ bᵢ)` as (rows, heads, n, h), rotated for the queries and keys.
            let part = |i: usize| -> candle_core::Result<Tensor> {
                let mut p = x.matmul(&block.w[i].as_tensor().t()?)?;
                if i < 4 {
                    p = p.broadcast_add(block.b[i].as_tensor())?;
                }
                let p = p
                    .reshape((rows, n, heads, h))?
                    .transpose(1, 2)?
                    .contiguous()?;
                if i < 4 {
                    candle_nn::rotary_emb::rope_slow(&p, &cos, &sin)
                } else {
                    Ok(p)
                }
            };
            let (q1, k1, q2, k2, v) = (part(0)?, part(1)?, part(2)?, part(3)?, part(4)?);
            let s1 = q1.matmul(&k1.t()?)?;
            let s2 = q2.matmul(&k2.t()?)?;
            let a = ((s1 * s2)?.broadcast_mul(&mask)? / (h * h) as f64)?;
            let z = a
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((rows * n, d))?;
            let f = z.matmul(&block.w[5].as_tensor().t()?)?;
            x = (x + (f * self.shape.residual)?)?;
        }
        Ok(x)
    }

    /// Training logits `(rows·n, V)`: the stream over its batch RMS; updates the running mean.
    pub fn forward_train(&mut self, tokens: &Tensor) -> Result<Tensor, TrainError> {
        let x = self.stream(tokens)?;
        let r = x.sqr()?.mean_all()?.sqrt()?;
        let value = r.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        self.rms = if self.rms == 0.0 {
            value
        } else {
            0.99 * self.rms + 0.01 * value
        };
        Ok(x.broadcast_div(&r)?
            .matmul(&self.unembed.as_tensor().t()?)?)
    }

    /// Evaluation logits `(rows·n, V)`: the stream over the running scale `r̄`.
    pub fn forward_eval(&self, tokens: &Tensor) -> Result<Tensor, TrainError> {
        let x = (self.stream(tokens)? / self.rms)?;
        Ok(x.matmul(&self.unembed.as_tensor().t()?)?)
    }

    /// The evaluation model as tensim/1, read at `n_ctx` positions: `embed` (`d × V`, no
    /// bias), the attention layers, `unembed / r̄`.
    pub fn to_model(&self, n_ctx: usize) -> Result<Model, TrainError> {
        let mat = |t: &Tensor, scale: f64| -> Result<Mat<f64>, TrainError> {
            let rows: Vec<Vec<f64>> = t.to_dtype(DType::F64)?.to_vec2()?;
            Ok(Mat::from_fn(rows.len(), rows[0].len(), |i, j| {
                rows[i][j] * scale
            }))
        };
        let vec = |v: &Var| -> Result<Option<Vec<f64>>, TrainError> {
            Ok(Some(v.as_tensor().to_dtype(DType::F64)?.to_vec1()?))
        };
        let mut layers = vec![Layer::Linear(Linear {
            weight: mat(&self.embed.as_tensor().t()?, 1.0)?,
            bias: None,
        })];
        for block in &self.blocks {
            let w = |i: usize| mat(block.w[i].as_tensor(), 1.0);
            layers.push(Layer::Attention(Box::new(Attention {
                n_head: self.shape.heads,
                q1: w(0)?,
                k1: w(1)?,
                q2: w(2)?,
                k2: w(3)?,
                v: w(4)?,
                o: w(5)?,
                q1_bias: vec(&block.b[0])?,
                k1_bias: vec(&block.b[1])?,
                q2_bias: vec(&block.b[2])?,
                k2_bias: vec(&block.b[3])?,
                mask: Mask::Causal,
                rotary: Some(self.shape.rotary_base),
                residual: Some(Residual {
                    mode: ResidualMode::Add,
                    scale: self.shape.residual,
                }),
            })));
        }
        layers.push(Layer::Linear(Linear {
            weight: mat(self.unembed.as_tensor(), 1.0 / self.rms)?,
            bias: None,
        }));
        Ok(Model::new(self.shape.vocab, n_ctx, layers)?)
    }
}

/// Per-target cross-entropy `(rows·n)` of `logits` against `targets`.
pub fn token_losses(logits: &Tensor, targets: &Tensor) -> Result<Tensor, TrainError> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}
