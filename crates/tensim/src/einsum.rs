//! A small tensor-network contraction engine: `einsum` over named indices (one character per
//! index, `"ab,bc->ac"`), contracted pairwise by permute + GEMM in the order a path optimiser
//! (`opt-einsum-path`) chooses. The order is cached per expression (the network's topology) and
//! reused for every later call, whatever the sizes.
//!
//! Each pairwise step `A[bat, fa, k] · B[bat, k, fb] → C[bat, fa, fb]` is one GEMM per batch
//! index; indices found in one operand only and needed nowhere else are summed out first.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::linalg::{mul, MatRef, Par};

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor data does not fill shape {shape:?}"
        );
        Tensor { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, vec![0.0; n])
    }

    /// Row-major strides.
    fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.shape.len()];
        for k in (0..self.shape.len().saturating_sub(1)).rev() {
            s[k] = s[k + 1] * self.shape[k + 1];
        }
        s
    }

    /// The tensor with its axes reordered: axis `k` of the result is axis `perm[k]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Tensor {
        if perm.iter().enumerate().all(|(k, &p)| k == p) {
            return self.clone();
        }
        let strides = self.strides();
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        let from: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
        let mut data = Vec::with_capacity(self.data.len());
        let mut idx = vec![0usize; shape.len()];
        let mut at = 0usize;
        for _ in 0..self.data.len() {
            data.push(self.data[at]);
            // Odometer over the result's multi-index, tracking the source offset.
            for k in (0..shape.len()).rev() {
                idx[k] += 1;
                at += from[k];
                if idx[k] < shape[k] {
                    break;
                }
                at -= from[k] * shape[k];
                idx[k] = 0;
            }
        }
        Tensor::new(shape, data)
    }

    /// Sum over the trailing `n` axes.
    fn sum_trailing(&self, n: usize) -> Tensor {
        let keep = self.shape.len() - n;
        let inner: usize = self.shape[keep..].iter().product();
        let data = self
            .data
            .chunks(inner.max(1))
            .map(|c| c.iter().sum())
            .collect();
        let data = if inner == 0 {
            vec![0.0; self.shape[..keep].iter().product()]
        } else {
            data
        };
        Tensor::new(self.shape[..keep].to_vec(), data)
    }
}

/// A labelled operand during contraction (borrowed inputs are never copied).
struct Labelled<'a> {
    labels: Vec<char>,
    t: Cow<'a, Tensor>,
}

impl Labelled<'_> {
    /// Move the axes labelled `order` to the front in that order, then sum out the rest.
    fn arrange(&self, order: &[char]) -> Cow<'_, Tensor> {
        let mut perm: Vec<usize> = order
            .iter()
            .map(|c| self.labels.iter().position(|l| l == c).expect("label"))
            .collect();
        let rest: Vec<usize> = (0..self.labels.len())
            .filter(|k| !perm.contains(k))
            .collect();
        let n = rest.len();
        perm.extend(rest);
        if n == 0 && perm.iter().enumerate().all(|(k, &p)| k == p) {
            return Cow::Borrowed(self.t.as_ref());
        }
        Cow::Owned(self.t.permute(&perm).sum_trailing(n))
    }
}

/// A parsed contraction: input index lists and the output's.
#[derive(Clone, Debug)]
pub struct Einsum {
    expr: String,
    inputs: Vec<Vec<char>>,
    output: Vec<char>,
}

/// Contraction orders found so far, per expression.
static PATHS: Mutex<Option<HashMap<String, Vec<Vec<usize>>>>> = Mutex::new(None);

impl Einsum {
    /// Parse `"ab,bc->ac"`: comma-separated inputs, `->`, the output; each index a character,
    /// none repeated within one operand.
    pub fn parse(expr: &str) -> Result<Einsum> {
        let bad = |why: String| Error::Invalid(format!("einsum \"{expr}\": {why}"));
        let (lhs, rhs) = expr
            .split_once("->")
            .ok_or_else(|| bad("expected inputs->output".into()))?;
        let inputs: Vec<Vec<char>> = lhs.split(',').map(|s| s.trim().chars().collect()).collect();
        let output: Vec<char> = rhs.trim().chars().collect();
        for (k, ix) in inputs.iter().chain(std::iter::once(&output)).enumerate() {
            for (i, c) in ix.iter().enumerate() {
                if ix[..i].contains(c) {
                    return Err(bad(format!("index '{c}' repeated in operand {k}")));
                }
            }
        }
        if let Some(c) = output
            .iter()
            .find(|c| !inputs.iter().any(|ix| ix.contains(c)))
        {
            return Err(bad(format!("output index '{c}' appears in no input")));
        }
        Ok(Einsum {
            expr: expr.to_string(),
            inputs,
            output,
        })
    }

    /// The expression in canonical `"ab,bc->ac"` form.
    pub fn expression(&self) -> String {
        let ins: Vec<String> = self.inputs.iter().map(|v| v.iter().collect()).collect();
        format!(
            "{}->{}",
            ins.join(","),
            self.output.iter().collect::<String>()
        )
    }

    /// Pairwise contraction order (opt-einsum-path, cached per expression).
    fn path(&self, shapes: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let key = self.expression();
        if let Some(p) = PATHS.lock().unwrap().as_ref().and_then(|m| m.get(&key)) {
            return Ok(p.clone());
        }
        let path = if self.inputs.len() < 2 {
            vec![]
        } else {
            let (path, _) = opt_einsum_path::contract_path(
                &key,
                shapes,
                if shapes.len() > 8 {
                    "greedy"
                } else {
                    "auto-hq"
                },
                None,
            )
            .map_err(|e| Error::Invalid(format!("einsum \"{}\": {e}", self.expr)))?;
            path
        };
        PATHS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(key, path.clone());
        Ok(path)
    }

    /// Contract `operands` (one per input, shapes consistent with the labels).
    pub fn contract(&self, operands: &[&Tensor]) -> Result<Tensor> {
        let bad = |why: String| Error::Invalid(format!("einsum \"{}\": {why}", self.expr));
        if operands.len() != self.inputs.len() {
            return Err(bad(format!(
                "{} operands for {} inputs",
                operands.len(),
                self.inputs.len()
            )));
        }
        let mut size: HashMap<char, usize> = HashMap::new();
        for (k, (ix, t)) in self.inputs.iter().zip(operands).enumerate() {
            if ix.len() != t.shape.len() {
                return Err(bad(format!(
                    "operand {k} has shape {:?}, expected {} axes",
                    t.shape,
                    ix.len()
                )));
            }
            for (c, &n) in ix.iter().zip(&t.shape) {
                if *size.entry(*c).or_insert(n) != n {
                    return Err(bad(format!("index '{c}' has sizes {} and {n}", size[c])));
                }
            }
        }
        let shapes: Vec<Vec<usize>> = operands.iter().map(|t| t.shape.clone()).collect();
        let mut ops: Vec<Labelled> = self
            .inputs
            .iter()
            .zip(operands)
            .map(|(ix, t)| Labelled {
                labels: ix.clone(),
                t: Cow::Borrowed(*t),
            })
            .collect();
        for step in self.path(&shapes)? {
            let (i, j) = (step[0].min(step[1]), step[0].max(step[1]));
            let b = ops.remove(j);
            let a = ops.remove(i);
            let needed: Vec<char> = ops
                .iter()
                .flat_map(|o| o.labels.iter().copied())
                .chain(self.output.iter().copied())
                .collect();
            ops.push(pair(&a, &b, &needed));
        }
        let last = ops.pop().expect("one operand left");
        Ok(last.arrange(&self.output).into_owned())
    }
}

/// `A ⋆ B`: indices shared and `needed` later are batch indices, shared and not needed are
/// contracted, the others are free; one GEMM per batch index.
fn pair<'a>(a: &Labelled, b: &Labelled, needed: &[char]) -> Labelled<'a> {
    let in_b = |c: &char| b.labels.contains(c);
    let in_a = |c: &char| a.labels.contains(c);
    let keep = |c: &char| needed.contains(c);
    let batch: Vec<char> = a
        .labels
        .iter()
        .filter(|c| in_b(c) && keep(c))
        .copied()
        .collect();
    let inner: Vec<char> = a
        .labels
        .iter()
        .filter(|c| in_b(c) && !keep(c))
        .copied()
        .collect();
    let free_a: Vec<char> = a
        .labels
        .iter()
        .filter(|c| !in_b(c) && keep(c))
        .copied()
        .collect();
    let free_b: Vec<char> = b
        .labels
        .iter()
        .filter(|c| !in_a(c) && keep(c))
        .copied()
        .collect();
    let cat = |x: &[&[char]]| x.concat();
    // Axes only in one operand and needed nowhere else are summed out by `arrange`.
    let ta = a.arrange(&cat(&[&batch, &free_a, &inner]));
    let tb = b.arrange(&cat(&[&batch, &inner, &free_b]));
    let len = |t: &Tensor, from: usize, n: usize| t.shape[from..from + n].iter().product::<usize>();
    let nb = len(&ta, 0, batch.len());
    let m = len(&ta, batch.len(), free_a.len());
    let k = len(&ta, batch.len() + free_a.len(), inner.len());
    let n = len(&tb, batch.len() + inner.len(), free_b.len());
    let mut data = Vec::with_capacity(nb * m * n);
    for z in 0..nb {
        let am = MatRef::from_row_major_slice(&ta.data[z * m * k..(z + 1) * m * k], m, k);
        let bm = MatRef::from_row_major_slice(&tb.data[z * k * n..(z + 1) * k * n], k, n);
        let c = mul(am, bm, Par::Seq);
        for r in 0..m {
            data.extend((0..n).map(|q| c[(r, q)]));
        }
    }
    let mut shape: Vec<usize> = ta.shape[..batch.len() + free_a.len()].to_vec();
    shape.extend(&tb.shape[batch.len() + inner.len()..]);
    Labelled {
        labels: cat(&[&batch, &free_a, &free_b]),
        t: Cow::Owned(Tensor::new(shape, data)),
    }
}

/// `einsum(expr, operands)`: parse and contract.
pub fn einsum(expr: &str, operands: &[&Tensor]) -> Result<Tensor> {
    Einsum::parse(expr)?.contract(operands)
}
