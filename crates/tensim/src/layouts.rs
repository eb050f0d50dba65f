//! Descriptions researchers already have, read as a tensim/1 [`Arch`] plus the preparation
//! ([`Prepare`]) their stored tensors need first.
//!
//! The bilinear-attention language model's training `config.json` (its `model` block:
//! `vocab_size`, `d_model`, `n_head`, `n_layers`, `attn_type`, `attn_scale`, `rope_base`,
//! `use_bias_qk`) describes `embed` (stored `(vocab, d_model)`, as `nn.Embedding`) →
//! `n_layers` × causal rotary bilinear attention with an additive residual × `attn_scale` →
//! a normalisation with frozen energy `e` → `unembed`; the normalisation is folded into the
//! unembedding as `W[:, j] / √(e_j + 10⁻⁶)`.

use serde_json::Value;

use crate::arch::{
    Arch, AttentionSpec, InputSpec, LayerSpec, LinearSpec, Mask, Residual, ResidualMode, Rotary,
    FORMAT,
};
use crate::error::{Error, Result};

/// A step applied to the stored tensors before the layers read them.
#[derive(Clone, Debug, PartialEq)]
pub enum Prepare {
    /// Stored `(a, b)`, read `(b, a)`: an embedding table `(vocab, d)` as the linear map
    /// `(d, vocab)`.
    Transpose { tensor: String, layer: usize },
    /// `W[:, j] ← W[:, j] / √(e_j + eps)`, `e` one value or one per column: a normalisation
    /// whose energy is a frozen statistic, folded into the linear map after it.
    FoldNorm {
        weight: String,
        energy: String,
        eps: f64,
        layer: usize,
    },
}

impl Prepare {
    /// The stored tensor this step reads besides the layers' own.
    pub fn extra_tensor(&self) -> Option<&str> {
        match self {
            Prepare::FoldNorm { energy, .. } => Some(energy),
            Prepare::Transpose { .. } => None,
        }
    }
}

/// Analysis positions of a language model when no `--n-ctx` is given.
pub const LM_N_CTX: usize = 4;
/// The ε of the language model's final normalisation.
const NORM_EPS: f64 = 1e-6;

/// Whether `value` is a language-model training config (a `model` block with `attn_type`).
pub fn is_lm_config(value: &Value) -> bool {
    value["model"].get("attn_type").is_some()
}

/// The description of the language model a training config describes (module doc).
pub fn lm_config(value: &Value, origin: &str) -> Result<Arch> {
    let bad = |reason: String| Error::Arch {
        origin: origin.to_string(),
        reason: format!("language-model config: {reason}"),
    };
    let model = &value["model"];
    let size = |key: &str| {
        model[key]
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| bad(format!("model.{key} must be a positive integer")))
    };
    let (vocab, d_model, n_head, n_layers) = (
        size("vocab_size")?,
        size("d_model")?,
        size("n_head")?,
        size("n_layers")?,
    );
    match model["attn_type"].as_str() {
        Some("bilinear") => {}
        other => {
            return Err(bad(format!(
                "attn_type {} is not a tensor network (only \"bilinear\" attention is polynomial)",
                other.map_or("missing".into(), |s| format!("\"{s}\""))
            )))
        }
    }
    for (key, v) in model.as_object().into_iter().flatten() {
        let norm = key.contains("norm");
        let foldable = matches!(v, Value::Null | Value::Bool(false))
            || v.as_str().is_some_and(|s| {
                ["none", "energy", "running", "frozen"]
                    .iter()
                    .any(|ok| s.to_lowercase().contains(ok))
            });
        if norm && !foldable {
            return Err(bad(format!(
                "model.{key} = {v}: a normalisation with an input-dependent scale cannot be \
                 folded into the weights (only the frozen running energy of the final norm can)"
            )));
        }
    }
    let attn_scale = model["attn_scale"]
        .as_f64()
        .ok_or_else(|| bad("model.attn_scale must be a number".into()))?;
    let rotary = match &model["rope_base"] {
        Value::Null => None,
        v => Some(Rotary {
            base: v
                .as_f64()
                .filter(|b| *b > 0.0)
                .ok_or_else(|| bad("model.rope_base must be a positive number".into()))?,
        }),
    };
    let qk_bias = model["use_bias_qk"].as_bool().unwrap_or(false);
    let mut layers = vec![LayerSpec::Linear(LinearSpec {
        weight: "embed.weight".into(),
        bias: None,
    })];
    for i in 0..n_layers {
        let w = |p: &str| format!("layers.{i}.{p}.weight");
        let b = |p: &str| qk_bias.then(|| format!("layers.{i}.{p}.bias"));
        layers.push(LayerSpec::Attention(AttentionSpec {
            n_head,
            q1: w("q1"),
            k1: w("k1"),
            q2: w("q2"),
            k2: w("k2"),
            v: w("v"),
            o: w("o"),
            q1_bias: b("q1"),
            k1_bias: b("k1"),
            q2_bias: b("q2"),
            k2_bias: b("k2"),
            mask: Mask::Causal,
            rotary: rotary.clone(),
            residual: Some(Residual {
                mode: ResidualMode::Add,
                scale: attn_scale,
            }),
        }));
    }
    layers.push(LayerSpec::Linear(LinearSpec {
        weight: "unembed.weight".into(),
        bias: None,
    }));
    let arch = Arch {
        format: FORMAT.into(),
        input: InputSpec {
            dim: vocab,
            n_ctx: LM_N_CTX,
        },
        layers,
        prepare: vec![
            Prepare::Transpose {
                tensor: "embed.weight".into(),
                layer: 0,
            },
            Prepare::FoldNorm {
                weight: "unembed.weight".into(),
                energy: "final_norm.running_mean_energy".into(),
                eps: NORM_EPS,
                layer: n_layers + 1,
            },
        ],
    };
    if d_model % n_head != 0 {
        return Err(bad(format!(
            "d_model {d_model} is not a multiple of n_head {n_head}"
        )));
    }
    Ok(arch)
}
