//! The trained network: a bilinear layer `(Lx) ∘ (Rx)` (one fused `Linear(d_in, 2h)`, no
//! biases, rows `0..h` are `L`) and a linear head — the architecture of the paper's grokking and
//! backdoor experiments (MATH.md §7.1–7.2).

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::Optimizer;
use rand::{RngExt, SeedableRng};

use tensim::layers::{Bilinear, Layer, Linear};
use tensim::linalg::Mat;
use tensim::Model;

use crate::TrainError;

/// The trainable parameters: fused `[L; R]` (`2h × 2P`) and the head `W_p` (`P × h`).
pub struct Params {
    pub w_lr: Var,
    pub w_p: Var,
    hidden: usize,
}

impl Params {
    /// `d_in → hidden → d_out` with PyTorch's default init `U(±1/√fan_in)`, drawn from `seed`.
    pub fn init(
        d_in: usize,
        hidden: usize,
        d_out: usize,
        seed: u64,
        dev: &Device,
    ) -> Result<Params, TrainError> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut uniform = |rows: usize, cols: usize| -> Result<Var, TrainError> {
            let b = 1.0 / (cols as f32).sqrt();
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-b..b)).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, (rows, cols), dev)?)?)
        };
        Ok(Params {
            w_lr: uniform(2 * hidden, d_in)?,
            w_p: uniform(d_out, hidden)?,
            hidden,
        })
    }

    /// AdamW over both weight matrices.
    pub fn adamw(&self, lr: f64, weight_decay: f64) -> Result<candle_nn::AdamW, TrainError> {
        let params = candle_nn::ParamsAdamW {
            lr,
            weight_decay,
            ..Default::default()
        };
        Ok(candle_nn::AdamW::new(
            vec![self.w_lr.clone(), self.w_p.clone()],
            params,
        )?)
    }

    /// Logits `W_p ((Lx) ∘ (Rx))` for rows `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        let h = x.matmul(&self.w_lr.as_tensor().t()?)?;
        let (l, r) = (
            h.narrow(1, 0, self.hidden)?,
            h.narrow(1, self.hidden, self.hidden)?,
        );
        Ok((l * r)?.matmul(&self.w_p.as_tensor().t()?)?)
    }

    /// The current weights as a tensim model (f64): fused bilinear without `down`, linear head.
    pub fn to_model(&self) -> Result<Model, TrainError> {
        let mat = |v: &Var| -> Result<Mat<f64>, TrainError> {
            let rows: Vec<Vec<f32>> = v.as_tensor().to_vec2()?;
            Ok(Mat::from_fn(rows.len(), rows[0].len(), |i, j| {
                rows[i][j] as f64
            }))
        };
        let (lr, head) = (mat(&self.w_lr)?, mat(&self.w_p)?);
        let h = self.hidden;
        let layers = vec![
            Layer::Bilinear(Bilinear {
                left: lr.subrows(0, h).to_owned(),
                right: lr.subrows(h, h).to_owned(),
                down: None,
                left_bias: None,
                right_bias: None,
                down_bias: None,
                residual: None,
            }),
            Layer::Linear(Linear {
                weight: head,
                bias: None,
            }),
        ];
        Ok(Model::new(lr.ncols(), 1, layers)?)
    }
}

/// Mean cross-entropy and accuracy on inputs `x` (rows) with labels `y`.
pub fn evaluate(params: &Params, x: &Tensor, y: &Tensor) -> Result<(f64, f64), TrainError> {
    let logits = params.forward(x)?;
    let loss = candle_nn::loss::cross_entropy(&logits, y)?.to_scalar::<f32>()? as f64;
    let correct = logits
        .argmax(D::Minus1)?
        .eq(y)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok((loss, correct as f64 / y.dims1()? as f64))
}

/// Rows `idx` of `x` and `y`.
pub fn select(x: &Tensor, y: &Tensor, idx: &[u32]) -> Result<(Tensor, Tensor), TrainError> {
    let ids = Tensor::from_slice(idx, idx.len(), x.device())?;
    Ok((x.index_select(&ids, 0)?, y.index_select(&ids, 0)?))
}
