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
    Arch, AttentionSpec, BilinearSpec, InputSpec, LayerSpec, LinearSpec, Mask, Residual,
    ResidualMode, Rotary, FORMAT,
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

/// A layout named instead of described: its layers are read from the checkpoint's tensor names.
#[derive(Clone, Debug, PartialEq)]
pub enum Named {
    /// `embed` → `body.{i}.{l,r,d}` (or fused `body.{i}.{w,p}`) → `head`, each bilinear layer
    /// with the residual `(1 − s)·x + s·f(x)` (`lerp = Some(s)`) or none.
    DeepMlp { lerp: Option<f64> },
}

/// The layouts named by `--arch NAME[:key=value,…]`, with their parameters.
pub const NAMED: &[(&str, &str)] = &[(
    "deepmlp:lerp=S",
    "embed → body.{i}.{l,r,d} (or fused body.{i}.{w,p}) → head, lerp residual scale S (none: \
     no residual); sizes and depth from the tensor shapes",
)];

/// The description `text` names (`deepmlp:lerp=0.5`), if it names one.
pub fn named(text: &str) -> Option<Result<Arch>> {
    let (name, params) = text.split_once(':').unwrap_or((text, ""));
    if name != "deepmlp" {
        return None;
    }
    let bad = |reason: String| Error::Arch {
        origin: text.to_string(),
        reason,
    };
    let lerp = match params.split_once('=') {
        Some(("lerp", "none")) => Ok(None),
        Some(("lerp", v)) => v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite())
            .map(Some)
            .ok_or_else(|| bad(format!("lerp={v} is not a number"))),
        _ => Err(bad(
            "the deepmlp layout needs its residual scale: deepmlp:lerp=S (S a number, or none)"
                .into(),
        )),
    };
    Some(lerp.map(|lerp| Arch {
        format: FORMAT.into(),
        input: InputSpec { dim: 1, n_ctx: 1 },
        layers: Vec::new(),
        prepare: Vec::new(),
        named: Some(Named::DeepMlp { lerp }),
    }))
}

/// `arch` with a named layout resolved against the tensors a checkpoint holds.
pub fn resolve(arch: &Arch, tensors: &[crate::io::TensorInfo], origin: &str) -> Result<Arch> {
    let Some(Named::DeepMlp { lerp }) = &arch.named else {
        return Ok(arch.clone());
    };
    let bad = |reason: String| Error::Arch {
        origin: origin.to_string(),
        reason: format!("layout deepmlp: {reason}"),
    };
    let (mut draft, _) = draft(tensors);
    let n = draft.layers.len();
    let linear_named = |l: &LayerSpec, prefix: &str| matches!(l, LayerSpec::Linear(s) if s.weight.starts_with(prefix));
    if n < 2
        || !linear_named(&draft.layers[0], "embed")
        || !linear_named(&draft.layers[n - 1], "head")
    {
        return Err(bad(
            "expected embed.weight, body.{i}.{l,r,d} and head.weight (`tensim init-arch` shows \
             what the file holds)"
                .into(),
        ));
    }
    for (i, layer) in draft.layers[1..n - 1].iter_mut().enumerate() {
        let LayerSpec::Bilinear(b) = layer else {
            return Err(bad(format!("layer {} is not a bilinear body block", i + 1)));
        };
        let names = [&b.left, &b.left_right];
        if !names.iter().any(|m| {
            m.as_ref()
                .is_some_and(|m| m.starts_with(&format!("body.{i}.")))
        }) {
            return Err(bad(format!("layer {} is not body.{i}", i + 1)));
        }
        b.residual = lerp.map(|scale| Residual {
            mode: ResidualMode::Lerp,
            scale,
        });
    }
    draft.input.n_ctx = arch.input.n_ctx;
    Ok(draft)
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
        named: None,
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

/// A draft description inferred from the names and shapes of a checkpoint's tensors, with notes
/// on what the names cannot tell (head counts, residuals). For the user to check: never used
/// to load anything.
///
/// Modules (`prefix.weight` matrices, with `prefix.bias`) are grouped by their parent: one with
/// children `q1 k1 q2 k2 v o` is an attention layer; `l r` (or `left right`) with an optional
/// `d` (`down`, `p`, `proj`) a bilinear layer; `w` holding twice the rows `p` has columns a fused
/// (`left_right`) bilinear layer; every other matrix a linear layer. Layers are ordered
/// embedding first, heads last, numbered blocks by number.
pub fn draft(tensors: &[crate::io::TensorInfo]) -> (Arch, Vec<String>) {
    let matrix = |m: &str| {
        tensors
            .iter()
            .find(|t| t.name == format!("{m}.weight") && t.shape.len() == 2)
            .map(|t| (t.shape[0], t.shape[1]))
    };
    let bias = |m: &str| {
        let b = format!("{m}.bias");
        tensors.iter().any(|t| t.name == b).then_some(b)
    };
    let weight = |m: &str| format!("{m}.weight");
    let mut modules: Vec<String> = tensors
        .iter()
        .filter(|t| t.shape.len() == 2)
        .filter_map(|t| t.name.strip_suffix(".weight").map(str::to_string))
        .collect();
    modules.sort_by_key(|m| order_key(m));
    let parent = |m: &str| {
        m.rsplit_once('.')
            .map_or(String::new(), |(p, _)| p.to_string())
    };
    let child = |p: &str, c: &str| {
        let m = if p.is_empty() {
            c.to_string()
        } else {
            format!("{p}.{c}")
        };
        modules.contains(&m).then_some(m)
    };
    let mut notes = Vec::new();
    let mut layers: Vec<(LayerSpec, usize, usize)> = Vec::new();
    let mut done: Vec<String> = Vec::new();
    for m in &modules {
        if done.contains(m) {
            continue;
        }
        let p = parent(m);
        let pick = |names: &[&str]| names.iter().find_map(|c| child(&p, c));
        let attention: Option<Vec<String>> = ["q1", "k1", "q2", "k2", "v", "o"]
            .iter()
            .map(|c| child(&p, c))
            .collect();
        if let Some(a) = attention {
            let (d_in, d_out) = (matrix(&a[0]).unwrap().1, matrix(&a[5]).unwrap().0);
            notes.push(format!(
                "{p}: n_head cannot be read from shapes (1 written), nor the mask (causal), \
                 rotary base (none) or residual; set them"
            ));
            layers.push((
                LayerSpec::Attention(AttentionSpec {
                    n_head: 1,
                    q1: weight(&a[0]),
                    k1: weight(&a[1]),
                    q2: weight(&a[2]),
                    k2: weight(&a[3]),
                    v: weight(&a[4]),
                    o: weight(&a[5]),
                    q1_bias: bias(&a[0]),
                    k1_bias: bias(&a[1]),
                    q2_bias: bias(&a[2]),
                    k2_bias: bias(&a[3]),
                    mask: Mask::Causal,
                    rotary: None,
                    residual: None,
                }),
                d_in,
                d_out,
            ));
            done.extend(a);
            continue;
        }
        let down = pick(&["d", "down", "p", "proj"]);
        let separate = pick(&["l", "left"]).zip(pick(&["r", "right"]));
        let fused = pick(&["w", "left_right"]).filter(|w| {
            let rows = matrix(w).unwrap().0;
            down.as_ref()
                .is_some_and(|d| matrix(d).unwrap().1 * 2 == rows)
        });
        if separate.is_some() || fused.is_some() {
            let (hidden, d_in) = match (&separate, &fused) {
                (Some((l, _)), _) => matrix(l).unwrap(),
                (None, Some(w)) => matrix(w).map(|(r, c)| (r / 2, c)).unwrap(),
                (None, None) => unreachable!(),
            };
            let d_out = down.as_ref().map_or(hidden, |d| matrix(d).unwrap().0);
            let spec = BilinearSpec {
                left: separate.as_ref().map(|s| weight(&s.0)),
                right: separate.as_ref().map(|s| weight(&s.1)),
                left_bias: separate.as_ref().and_then(|s| bias(&s.0)),
                right_bias: separate.as_ref().and_then(|s| bias(&s.1)),
                left_right: fused.as_ref().map(|w| weight(w)),
                left_right_bias: fused.as_ref().and_then(|w| bias(w)),
                down: down.as_ref().map(|d| weight(d)),
                down_bias: down.as_ref().and_then(|d| bias(d)),
                residual: None,
            };
            if d_in == d_out {
                notes.push(format!(
                    "{p}: a residual cannot be read from shapes (none written); add \
                     \"residual\" if the block has one"
                ));
            }
            layers.push((LayerSpec::Bilinear(spec), d_in, d_out));
            done.extend(separate.into_iter().flat_map(|(l, r)| [l, r]));
            done.extend(fused.into_iter().chain(down));
            continue;
        }
        let (out, d_in) = matrix(m).unwrap();
        layers.push((
            LayerSpec::Linear(LinearSpec {
                weight: weight(m),
                bias: bias(m),
            }),
            d_in,
            out,
        ));
        done.push(m.clone());
    }
    for w in layers.windows(2) {
        if w[0].2 != w[1].1 {
            notes.push(format!(
                "a layer outputs {} values and the next reads {}: check the order and the \
                 (out, in) layout (an nn.Embedding table is stored (vocab, d))",
                w[0].2, w[1].1
            ));
        }
    }
    let embedding = |l: &(LayerSpec, usize, usize)| matches!(&l.0, LayerSpec::Linear(s) if s.weight.contains("embed"));
    if let [first, second, ..] = &layers[..] {
        if embedding(first) && first.2 != second.1 && first.1 == second.1 {
            notes.push(format!(
                "the first layer looks like an nn.Embedding table stored (vocab, d) = ({}, {}); \
                 tensim/1 reads (out, in): store it transposed, or for the bilinear-attention \
                 language model pass its training config.json as --arch (`tensim layouts`)",
                first.2, first.1
            ));
        }
    }
    let dim = layers.first().map_or(0, |l| l.1);
    let arch = Arch {
        format: FORMAT.into(),
        input: InputSpec { dim, n_ctx: 1 },
        layers: layers.into_iter().map(|l| l.0).collect(),
        prepare: Vec::new(),
        named: None,
    };
    if arch
        .layers
        .iter()
        .any(|l| matches!(l, LayerSpec::Attention(_)))
    {
        notes.push("input.n_ctx (1 written) is the number of positions to analyse".into());
    }
    (arch, notes)
}

/// Embeddings first, heads last, numbers compared as numbers (`body.10` after `body.9`).
fn order_key(module: &str) -> (u8, Vec<(String, u64)>) {
    let lower = module.to_lowercase();
    let last = lower.rsplit('.').next().unwrap_or("");
    let rank = if last.contains("embed") && !last.contains("unembed") {
        0
    } else if ["head", "unembed", "lm_head", "readout", "out"]
        .iter()
        .any(|h| last == *h || last.starts_with(h))
        && !lower.contains("layers.")
        && !lower.contains("body.")
        && !lower.contains("blocks.")
    {
        2
    } else {
        1
    };
    let parts = module
        .split('.')
        .map(|s| match s.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (s.to_string(), 0),
        })
        .collect();
    (rank, parts)
}
