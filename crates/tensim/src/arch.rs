//! The architecture description of the `tensim/1` model-file contract (FORMAT.md): which layers a
//! model has, in which order, and which safetensors tensor plays which role.
//!
//! Parsing is strict: unknown keys and unknown layer kinds are errors, and non-polynomial layer
//! kinds are refused with a message saying why.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The only format tag this version reads and writes.
pub const FORMAT: &str = "tensim/1";

/// Top-level description: input size and the list of layers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arch {
    pub format: String,
    pub input: InputSpec,
    pub layers: Vec<LayerSpec>,
    /// What the stored tensors need before the layers read them (descriptions read from other
    /// layouts, [`crate::layouts`]; never part of a tensim/1 file).
    #[serde(skip)]
    pub prepare: Vec<crate::layouts::Prepare>,
    /// A layout named instead of described (`--arch deepmlp:lerp=0.5`): `layers` are read from
    /// the checkpoint's tensor names when it is loaded ([`crate::layouts::resolve`]).
    #[serde(skip)]
    pub named: Option<crate::layouts::Named>,
}

/// Size of one input vector and the number of sequence positions the analysis spans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub dim: usize,
    #[serde(default = "one")]
    pub n_ctx: usize,
}

fn one() -> usize {
    1
}

/// One layer of the description.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LayerSpec {
    Linear(LinearSpec),
    Bilinear(BilinearSpec),
    Attention(AttentionSpec),
}

/// `y = W x + b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSpec {
    pub weight: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
}

/// `y = D((L x + b_L) ∘ (R x + b_R)) + b_D`, optionally with a residual.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BilinearSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub right: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_right: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub right_bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_right_bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual: Option<Residual>,
}

/// Bilinear ("quadratic-score") attention, FORMAT.md `attention`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionSpec {
    pub n_head: usize,
    pub q1: String,
    pub k1: String,
    pub q2: String,
    pub k2: String,
    pub v: String,
    pub o: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q1_bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k1_bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q2_bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k2_bias: Option<String>,
    #[serde(default = "causal")]
    pub mask: Mask,
    #[serde(default)]
    pub rotary: Option<Rotary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual: Option<Residual>,
}

fn causal() -> Mask {
    Mask::Causal
}

/// Attention mask: `causal` (u ≤ t), `none` (all pairs), `diag` (u = t).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mask {
    Causal,
    None,
    Diag,
}

/// Rotary position embedding parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotary {
    pub base: f64,
}

/// Residual connection around a layer `f`: `lerp` gives `(1−s)x + s f(x)`, `add` gives `x + s f(x)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Residual {
    pub mode: ResidualMode,
    pub scale: f64,
}

impl Residual {
    /// `(c, r)` of `y = r·x + c·f(x)`: `(1, 0)` without residual, `(s, 1−s)` for `lerp`,
    /// `(s, 1)` for `add`.
    pub fn weights(residual: Option<Residual>) -> (f64, f64) {
        match residual {
            None => (1.0, 0.0),
            Some(Residual {
                mode: ResidualMode::Lerp,
                scale,
            }) => (scale, 1.0 - scale),
            Some(Residual {
                mode: ResidualMode::Add,
                scale,
            }) => (scale, 1.0),
        }
    }
}

/// How the residual combines the input with the layer output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResidualMode {
    Lerp,
    Add,
}

/// Layer kinds that are not polynomials, with a hint where one helps.
const NOT_POLYNOMIAL: &[(&str, &str)] = &[
    (
        "softmax_attention",
        ": softmax is not a polynomial; tensim handles bilinear (quadratic-score) `attention`",
    ),
    ("softmax", ": softmax is not a polynomial"),
    ("relu", ""),
    ("gelu", ""),
    ("silu", ""),
    ("swish", ""),
    (
        "swiglu",
        ": replace the gate by the bilinear product (a `bilinear` layer)",
    ),
    (
        "geglu",
        ": replace the gate by the bilinear product (a `bilinear` layer)",
    ),
    ("tanh", ""),
    ("sigmoid", ""),
    (
        "mlp",
        ": an MLP with an elementwise activation is not polynomial; use `bilinear`",
    ),
];
const NORMS: &[&str] = &[
    "layernorm",
    "layer_norm",
    "rmsnorm",
    "rms_norm",
    "batchnorm",
    "batch_norm",
    "norm",
];

impl Arch {
    /// Parse and validate a JSON description. `origin` names where it came from (a file, or
    /// "metadata of FILE") and prefixes every error.
    pub fn from_json(text: &str, origin: &str) -> Result<Arch> {
        let bad = |reason: String| Error::Arch {
            origin: origin.to_string(),
            reason,
        };
        // A byte-order mark (as some editors on Windows write) is not part of the JSON.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object at the top level".into()))?;
        if !obj.contains_key("format") && crate::layouts::is_lm_config(&value) {
            return crate::layouts::lm_config(&value, origin);
        }
        for key in obj.keys() {
            if !matches!(key.as_str(), "format" | "input" | "layers") {
                return Err(bad(format!(
                    "unknown key \"{key}\" at the top level (expected format, input, layers)"
                )));
            }
        }
        let format = obj
            .get("format")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("missing \"format\": \"{FORMAT}\"")))?;
        if format != FORMAT {
            return Err(bad(format!(
                "format \"{format}\" is not supported (this version reads \"{FORMAT}\")"
            )));
        }
        let input: InputSpec = serde_json::from_value(
            obj.get("input")
                .cloned()
                .ok_or_else(|| bad("missing \"input\": {\"dim\": D}".into()))?,
        )
        .map_err(|e| bad(format!("input: {e}")))?;
        if input.dim == 0 || input.n_ctx == 0 {
            return Err(bad("input.dim and input.n_ctx must be at least 1".into()));
        }
        let raw_layers = obj
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("missing \"layers\": [...]".into()))?;
        if raw_layers.is_empty() {
            return Err(bad("\"layers\" is empty".into()));
        }
        let layers = raw_layers
            .iter()
            .enumerate()
            .map(|(i, v)| parse_layer(i, v, origin))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arch {
            format: FORMAT.to_string(),
            input,
            layers,
            prepare: Vec::new(),
            named: None,
        })
    }

    /// Read and parse a description file, or the layout a name that is no file names
    /// ([`crate::layouts::named`]).
    pub fn from_file(path: &std::path::Path) -> Result<Arch> {
        if !path.exists() {
            if let Some(arch) = crate::layouts::named(&path.to_string_lossy()) {
                return arch;
            }
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Arch {
            origin: path.display().to_string(),
            reason: "not a text file (the architecture JSON is expected here, not the weights)"
                .into(),
        })?;
        Arch::from_json(&text, &path.display().to_string())
    }

    /// This description analysed at `n_ctx` positions (`--n-ctx`, `n_ctx=`).
    pub fn with_positions(mut self, n_ctx: usize) -> Result<Arch> {
        if n_ctx == 0 {
            return Err(Error::Invalid("n_ctx must be at least 1".into()));
        }
        self.input.n_ctx = n_ctx;
        Ok(self)
    }

    /// Every tensor name the description refers to.
    pub fn tensor_names(&self) -> Vec<String> {
        let v = serde_json::to_value(self).expect("an Arch always serialises");
        let mut names: Vec<String> = self
            .prepare
            .iter()
            .filter_map(|p| p.extra_tensor().map(str::to_string))
            .collect();
        for layer in v["layers"].as_array().into_iter().flatten() {
            for (key, val) in layer.as_object().into_iter().flatten() {
                if key != "kind" && key != "mask" {
                    if let Some(s) = val.as_str() {
                        names.push(s.to_string());
                    }
                }
            }
        }
        names
    }

    /// The description as pretty JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("an Arch always serialises")
    }
}

fn parse_layer(index: usize, value: &Value, origin: &str) -> Result<LayerSpec> {
    let bad = |reason: String| Error::Arch {
        origin: origin.to_string(),
        reason: format!("layer {index}: {reason}"),
    };
    let mut obj = value
        .as_object()
        .cloned()
        .ok_or_else(|| bad("expected an object".into()))?;
    let kind = obj
        .remove("kind")
        .and_then(|k| k.as_str().map(str::to_string))
        .ok_or_else(|| bad("missing \"kind\"".into()))?;
    let rest = Value::Object(obj);
    let lower = kind.to_ascii_lowercase();
    let spec = match lower.as_str() {
        "linear" => LayerSpec::Linear(
            serde_json::from_value(rest).map_err(|e| bad(format!("linear: {e}")))?,
        ),
        "bilinear" => {
            let b: BilinearSpec =
                serde_json::from_value(rest).map_err(|e| bad(format!("bilinear: {e}")))?;
            check_bilinear(&b).map_err(bad)?;
            LayerSpec::Bilinear(b)
        }
        "attention" => {
            let a: AttentionSpec =
                serde_json::from_value(rest).map_err(|e| bad(format!("attention: {e}")))?;
            if a.n_head == 0 {
                return Err(bad("attention: n_head must be at least 1".into()));
            }
            LayerSpec::Attention(a)
        }
        other => {
            if let Some((_, hint)) = NOT_POLYNOMIAL.iter().find(|(k, _)| *k == other) {
                return Err(Error::NotPolynomial {
                    origin: origin.to_string(),
                    layer: index,
                    kind,
                    hint: hint.to_string(),
                });
            }
            if NORMS.contains(&other) {
                return Err(Error::NotPolynomial {
                    origin: origin.to_string(),
                    layer: index,
                    kind,
                    hint: ": its scale depends on the input. A normalisation with a fixed scale \
                           (a frozen running statistic) can be folded into the neighbouring \
                           weight matrix, then dropped"
                        .into(),
                });
            }
            return Err(bad(format!(
                "unknown layer kind \"{kind}\" (expected linear, bilinear or attention)"
            )));
        }
    };
    if let Some(r) = residual_of(&spec) {
        if !r.scale.is_finite() {
            return Err(bad(format!("residual scale {} is not finite", r.scale)));
        }
    }
    Ok(spec)
}

fn residual_of(spec: &LayerSpec) -> Option<Residual> {
    match spec {
        LayerSpec::Linear(_) => None,
        LayerSpec::Bilinear(b) => b.residual,
        LayerSpec::Attention(a) => a.residual,
    }
}

fn check_bilinear(b: &BilinearSpec) -> std::result::Result<(), String> {
    match (&b.left, &b.right, &b.left_right) {
        (Some(_), Some(_), None) | (None, None, Some(_)) => {}
        (_, _, Some(_)) => {
            return Err(
                "bilinear: give either \"left_right\" or \"left\" and \"right\", not both".into(),
            )
        }
        _ => {
            return Err(
                "bilinear: needs \"left\" and \"right\" (or the fused \"left_right\")".into(),
            )
        }
    }
    if b.left_right_bias.is_some() && (b.left_bias.is_some() || b.right_bias.is_some()) {
        return Err(
            "bilinear: give either \"left_right_bias\" or \"left_bias\"/\"right_bias\", not both"
                .into(),
        );
    }
    Ok(())
}
