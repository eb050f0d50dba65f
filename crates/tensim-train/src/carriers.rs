//! Which hidden units carry a fine-tune: breakdowns (tensor metric, per output) of a checkpoint
//! `a` against a later one `b` of the same run.
//!
//! With `Δf = f_b − f_a` and unit `i`'s change `Δu_i = u_{b,i} − u_{a,i}` (fine-tuning keeps
//! units in place), unit `i` carries `⟨Δu_i, Δf_o⟩ / ‖Δf_o‖²` of output `o`'s change: row `i` of
//! the breakdown of `⟨Δf, Δf⟩` ([`of_changes`]) for output `o`, over its inner product (the rest,
//! such as the head's bias change, is the remainder).

use serde::Serialize;
use tensim::layers::Layer;
use tensim::metrics::breakdown::{breakdown, of_changes, Breakdown};
use tensim::metrics::Metric;
use tensim::Model;

use crate::TrainError;

/// A hidden unit and the change it carries.
#[derive(Clone, Debug, Serialize)]
pub struct Carrier {
    pub unit: usize,
    /// `⟨Δu_i, Δf_o⟩ / ‖Δf_o‖²` for the two classes asked about.
    pub shares: [f64; 2],
    /// Fraction of the unit's input weights `‖L_i‖² + ‖R_i‖²` (in `b`) on the given pixels.
    pub on_pixels: f64,
}

/// What the breakdowns of `a` against `b` show.
#[derive(Clone, Debug, Serialize)]
pub struct Carriers {
    pub units: usize,
    /// Units the matching of `⟨a, b⟩` pairs with themselves.
    pub kept: usize,
    /// Share of `⟨a, b⟩` the matched pairs carry.
    pub matched_share: f64,
    /// The units carrying most of the first class's change, largest first.
    pub top: Vec<Carrier>,
    /// The given pixels' fraction of all pixels, and the mean `on_pixels` of all units.
    pub pixel_fraction: f64,
    pub mean_on_pixels: f64,
}

/// The breakdown of `⟨a, b⟩` and the `count` units carrying most of `classes[0]`'s change, with
/// their weight on `pixels`. Models: a bilinear layer reading the pixels, then linear layers.
pub fn carriers(
    a: &Model,
    b: &Model,
    classes: [usize; 2],
    pixels: &[usize],
    count: usize,
) -> Result<(Breakdown, Carriers), TrainError> {
    let ab = breakdown(a, b, &Metric::TENSOR, None, false)?;
    let change = of_changes((b, Some(a)), (b, Some(a)), &Metric::TENSOR, None, true)?;
    let per = change.per_output.as_ref().expect("per output");
    let units = ab.shape[0];
    // ⟨Δu_i, Δf_o⟩ / ‖Δf_o‖²: row i of output o's contributions over its inner product.
    let shares = classes.map(|o| {
        let (c, norm) = (&per[o].contributions, per[o].inner.expect("units give it"));
        (0..units)
            .map(|i| (0..c.ncols()).map(|j| c[(i, j)]).sum::<f64>() / norm)
            .collect::<Vec<f64>>()
    });
    let Layer::Bilinear(first) = &b.layers()[ab.layer_b] else {
        unreachable!("a breakdown over units is of a bilinear layer")
    };
    let on_pixels = |i: usize| {
        let w = |p: usize| first.left[(i, p)].powi(2) + first.right[(i, p)].powi(2);
        let all: f64 = (0..first.in_dim()).map(w).sum();
        pixels.iter().map(|&p| w(p)).sum::<f64>() / all
    };
    let mut all: Vec<Carrier> = (0..units)
        .map(|i| Carrier {
            unit: i,
            shares: [shares[0][i], shares[1][i]],
            on_pixels: on_pixels(i),
        })
        .collect();
    let mean_on_pixels = all.iter().map(|c| c.on_pixels).sum::<f64>() / units as f64;
    all.sort_by(|x, y| y.shares[0].total_cmp(&x.shares[0]));
    all.truncate(count);
    let c = Carriers {
        units,
        kept: ab.matching.iter().filter(|m| m.a == m.b).count(),
        matched_share: ab.matching.iter().map(|m| m.share).sum(),
        top: all,
        pixel_fraction: pixels.len() as f64 / first.in_dim() as f64,
        mean_on_pixels,
    };
    Ok((ab, c))
}
