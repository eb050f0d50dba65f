//! Write a synthetic "training run" with three phases to try `tensim matrix` on:
//! checkpoints drift slowly within a phase and jump between phases.
//!
//! `cargo run --release -p tensim --example synthetic_run -- OUT_DIR [N]`

use rand::SeedableRng;
use tensim::demo::{gauss, random_stack, StackShape};
use tensim::layers::Layer;
use tensim::linalg::Mat;
use tensim::Model;

/// `(1 − t)·a + t·b`, weight by weight (same architecture).
fn mix(a: &Model, b: &Model, t: f64) -> Model {
    let m = |x: &Mat<f64>, y: &Mat<f64>| {
        Mat::from_fn(x.nrows(), x.ncols(), |i, j| {
            (1.0 - t) * x[(i, j)] + t * y[(i, j)]
        })
    };
    let layers = a
        .layers()
        .iter()
        .zip(b.layers())
        .map(|(x, y)| match (x, y) {
            (Layer::Linear(x), Layer::Linear(y)) => Layer::Linear(tensim::Linear {
                weight: m(&x.weight, &y.weight),
                bias: None,
            }),
            (Layer::Bilinear(x), Layer::Bilinear(y)) => Layer::Bilinear(tensim::Bilinear {
                left: m(&x.left, &y.left),
                right: m(&x.right, &y.right),
                down: x.down.as_ref().zip(y.down.as_ref()).map(|(p, q)| m(p, q)),
                ..x.clone()
            }),
            _ => unreachable!(),
        })
        .collect();
    Model::new(a.in_dim(), 1, layers).unwrap()
}

fn main() -> tensim::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(args.get(1).map_or("synthetic-run", String::as_str));
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60);
    std::fs::create_dir_all(&out).map_err(|e| tensim::Error::Invalid(e.to_string()))?;
    let shape = StackShape {
        d_in: 64,
        d_model: 32,
        hidden: vec![48],
        d_out: 10,
        residual: None,
        bias: false,
        embed: true,
        down: true,
        heads: 0,
        n_ctx: 1,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let anchors: Vec<Model> = (0..4)
        .map(|_| random_stack(&shape, &mut rng))
        .collect::<tensim::Result<_>>()?;
    for i in 0..n {
        // Phase p drifts from anchor p towards anchor p+1, then jumps at the next phase.
        let (p, t) = (3 * i / n, (3 * i % n) as f64 / n as f64);
        let m = mix(
            &anchors[p],
            &anchors[p + 1],
            0.35 * t + 0.01 * gauss(&mut rng).abs(),
        );
        let step = (1.12f64.powi(i as i32) * 10.0).round() as u64;
        tensim::io::save(&m, &out.join(format!("step_{step}.safetensors")))?;
    }
    println!("wrote {n} checkpoints to {}", out.display());
    Ok(())
}
