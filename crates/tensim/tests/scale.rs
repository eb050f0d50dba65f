//! Extreme weight scales never produce a wrong number: a homogeneous network (no residual, no
//! bias) has a scale-invariant similarity under every metric, so scaling all its weights by 10^k
//! must give the unscaled value or an error, never another number (and never NaN).

mod common;

use common::*;
use tensim::linalg::Par;
use tensim::metrics::{self, Inputs, Metric, Options};

#[test]
fn scaled_homogeneous_models_give_the_same_value_or_an_error() {
    let opts = Options {
        per_output: false,
        par: Par::Seq,
    };
    let inputs = Inputs::gaussian(200, 1, 3, 7).unwrap();
    for depth in [1, 2] {
        let s = Spec {
            d_in: 3,
            d: 4,
            h: 3,
            d_out: 2,
            depth,
            residual: None,
            bias: false,
            embed: true,
        };
        let (a, b) = (random_model(s, 11), random_model(s, 12));
        for metric in [
            Metric::TENSOR,
            Metric::Matrix,
            Metric::Behavioral,
            Metric::Cka,
            Metric::Gaussian(Default::default()),
        ] {
            let base = metrics::compare(&a, &b, &metric, Some(&inputs), &opts)
                .unwrap()
                .similarity;
            for k in (-40..=40).step_by(5) {
                let f = 10f64.powi(k);
                let (sa, sb) = (map_parameters(&a, |x| x * f), map_parameters(&b, |x| x * f));
                match metrics::compare(&sa, &sb, &metric, Some(&inputs), &opts) {
                    Ok(r) => assert!(
                        (r.similarity - base).abs() < 1e-9 * base.abs().max(1.0),
                        "{metric:?} depth {depth}, weights x 1e{k}: {} instead of {base}",
                        r.similarity
                    ),
                    Err(e) => assert!(
                        matches!(
                            e.root(),
                            tensim::Error::OutOfRange { .. } | tensim::Error::ZeroNorm { .. }
                        ),
                        "{metric:?} depth {depth}, weights x 1e{k}: {e}"
                    ),
                }
            }
        }
    }
}
