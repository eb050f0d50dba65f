//! The bilinear node pair's Gram update of the tensor-similarity recursion (MATH.md §3.3).
//! Unit rows of `L̂`, `R̂` (unit slot, residual units) are gathered, not multiplied.

use super::{unit_row, PaddedBilinear};
use crate::gram::Gram;
use crate::linalg::{mul, mul_t, Mat, MatRef, Par};

impl PaddedBilinear {
    /// Gram update of the tensor-similarity recursion (MATH.md §3.3) for the node pair
    /// `(a = self, b)`:
    ///
    /// `K = ½[(L̂_a G L̂_bᵀ) ∘ (R̂_a G R̂_bᵀ) + (L̂_a G R̂_bᵀ) ∘ (R̂_a G L̂_bᵀ)]`, `G ← D̂_a K D̂_bᵀ`.
    ///
    /// `same` marks the self update (`b = a`, `G` symmetric), where `R̂GL̂ᵀ = (L̂GR̂ᵀ)ᵀ`.
    pub fn gram_update(&self, b: &PaddedBilinear, g: &Gram, same: bool, par: Par) -> Gram {
        let (la, ra) = (SplitRows::new(&self.l), SplitRows::new(&self.r));
        let sw = g.scaled().map_or(Sandwich::Identity, Sandwich::Gram);
        let (pl, pr) = (la.left_product(sw, par), ra.left_product(sw, par));
        let (ll, rr, lr, rl) = if same {
            // b = a and G symmetric: G B̂ᵀ = (ÂG)ᵀ and R̂GL̂ᵀ = (L̂GR̂ᵀ)ᵀ.
            let (ql, qr) = (pl.transpose().to_owned(), pr.transpose().to_owned());
            let lr = sandwich(&la, &pl, sw, &ra, &qr, par);
            let rl = lr.transpose().to_owned();
            (
                sandwich(&la, &pl, sw, &la, &ql, par),
                sandwich(&ra, &pr, sw, &ra, &qr, par),
                lr,
                rl,
            )
        } else {
            let (lb, rb) = (SplitRows::new(&b.l), SplitRows::new(&b.r));
            let (ql, qr) = (lb.right_product(sw, par), rb.right_product(sw, par));
            (
                sandwich(&la, &pl, sw, &lb, &ql, par),
                sandwich(&ra, &pr, sw, &rb, &qr, par),
                sandwich(&la, &pl, sw, &rb, &qr, par),
                sandwich(&ra, &pr, sw, &lb, &ql, par),
            )
        };
        let mut k = Mat::<f64>::zeros(ll.nrows(), ll.ncols());
        for j in 0..k.ncols() {
            let (a, b, c, d) = (
                ll.col_as_slice(j),
                rr.col_as_slice(j),
                lr.col_as_slice(j),
                rl.col_as_slice(j),
            );
            for (i, v) in k.col_as_slice_mut(j).iter_mut().enumerate() {
                *v = 0.5 * (a[i] * b[i] + c[i] * d[i]);
            }
        }
        let next = mul_t(
            mul(self.d.as_ref(), k.as_ref(), par).as_ref(),
            b.d.as_ref(),
            par,
        );
        Gram::from_quadratic(next, g.log_scale())
    }

    /// Entries of the largest intermediate of [`gram_update`](Self::gram_update) against `b`.
    pub fn gram_workspace(&self, b: &PaddedBilinear) -> usize {
        let (ha, hb) = (self.l.nrows(), b.l.nrows());
        2 * ha * self.l.ncols() + 5 * ha * hb + self.d.nrows() * (hb + b.d.nrows())
    }
}

/// Rows of `L̂` or `R̂`: the dense ones gathered into a matrix, and the unit rows `e_jᵀ`
/// (unit slot, residual units) kept as the index `j`.
struct SplitRows {
    dense: Mat<f64>,
    rows: Vec<Row>,
}

#[derive(Clone, Copy)]
enum Row {
    Dense(usize),
    Unit(usize),
}

impl SplitRows {
    fn new(m: &Mat<f64>) -> SplitRows {
        let mut dense_rows = vec![];
        let rows = (0..m.nrows())
            .map(|k| match unit_row(m, k) {
                Some(j) => Row::Unit(j),
                None => {
                    dense_rows.push(k);
                    Row::Dense(dense_rows.len() - 1)
                }
            })
            .collect();
        let dense = Mat::from_fn(dense_rows.len(), m.ncols(), |i, j| m[(dense_rows[i], j)]);
        SplitRows { dense, rows }
    }

    /// `Â_dense G`.
    fn left_product(&self, g: Sandwich<'_>, par: Par) -> Mat<f64> {
        match g {
            Sandwich::Identity => self.dense.clone(),
            Sandwich::Gram(g) => mul(self.dense.as_ref(), g, par),
        }
    }

    /// `G B̂_denseᵀ`.
    fn right_product(&self, g: Sandwich<'_>, par: Par) -> Mat<f64> {
        match g {
            Sandwich::Identity => self.dense.transpose().to_owned(),
            Sandwich::Gram(g) => mul_t(g, self.dense.as_ref(), par),
        }
    }
}

/// The Gram a sandwich is taken over: the identity (first layer) or a matrix.
#[derive(Clone, Copy)]
enum Sandwich<'a> {
    Identity,
    Gram(MatRef<'a, f64>),
}

/// `Â G B̂ᵀ` with GEMMs only between dense rows, given `P = Â_dense G` and `Q = G B̂_denseᵀ`:
/// for unit rows `e_j` the entries are `P[i, j']`, `Q[j, i']` or `G[j, j']`.
fn sandwich(
    a: &SplitRows,
    p: &Mat<f64>,
    g: Sandwich<'_>,
    b: &SplitRows,
    q: &Mat<f64>,
    par: Par,
) -> Mat<f64> {
    let pb = mul_t(p.as_ref(), b.dense.as_ref(), par);
    let mut out = Mat::<f64>::zeros(a.rows.len(), b.rows.len());
    let mut unit_col = vec![0.0; q.nrows()];
    for (k2, &col) in b.rows.iter().enumerate() {
        // Column k2 of the result: dense rows of Â read `dense`, unit rows e_j read `unit[j]`.
        let (dense, unit): (&[f64], &[f64]) = match (col, g) {
            (Row::Dense(i2), _) => (pb.col_as_slice(i2), q.col_as_slice(i2)),
            (Row::Unit(j2), Sandwich::Gram(g)) => (
                p.col_as_slice(j2),
                g.col(j2).try_as_col_major().unwrap().as_slice(),
            ),
            (Row::Unit(j2), Sandwich::Identity) => {
                unit_col
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = (j == j2) as u8 as f64);
                (p.col_as_slice(j2), &unit_col)
            }
        };
        for (o, &row) in out.col_as_slice_mut(k2).iter_mut().zip(&a.rows) {
            *o = match row {
                Row::Dense(i) => dense[i],
                Row::Unit(j) => unit[j],
            };
        }
    }
    out
}
