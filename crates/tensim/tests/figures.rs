//! Phase segmentation against exhaustive search, and heat-maps written as valid PNG/SVG files.

use tensim::linalg::Mat;
use tensim::phases::segment;
use tensim::plot::{diverging, heatmap, HeatmapOptions};

/// Within-phase dissimilarity of the phases starting at `starts`.
fn cost_of(sim: &Mat<f64>, starts: &[usize]) -> f64 {
    let mut ends = starts[1..].to_vec();
    ends.push(sim.nrows());
    let block = |a: usize, b: usize| {
        (a..b)
            .flat_map(|i| (a..b).map(move |j| 1.0 - sim[(i, j)]))
            .sum::<f64>()
    };
    starts.iter().zip(&ends).map(|(&a, &b)| block(a, b)).sum()
}

/// Every way of cutting 0..n into k contiguous phases: (starts, cost).
fn exhaustive(sim: &Mat<f64>, k: usize) -> (Vec<usize>, f64) {
    let n = sim.nrows();
    let mut best = (vec![], f64::INFINITY);
    // Choose k−1 cut points from 1..n.
    for mask in 0u32..(1 << (n - 1)) {
        if mask.count_ones() as usize != k - 1 {
            continue;
        }
        let mut starts = vec![0];
        starts.extend((1..n).filter(|c| mask & (1 << (c - 1)) != 0));
        let c = cost_of(sim, &starts);
        if c < best.1 {
            best = (starts, c);
        }
    }
    best
}

#[test]
fn segmentation_is_optimal() {
    for seed in 0..20u64 {
        let n = 5 + (seed as usize % 5);
        let v = |i: usize, j: usize| {
            ((seed as f64 + 1.0) * (i * 7 + j * 3 + i * j) as f64 * 0.37).sin()
        };
        let sim = Mat::from_fn(n, n, |i, j| {
            if i == j {
                1.0
            } else {
                0.5 * (v(i, j) + v(j, i))
            }
        });
        for k in 1..=4.min(n) {
            let got = segment(&sim, k).unwrap();
            let (starts, cost) = exhaustive(&sim, k);
            assert!(
                (got.cost - cost).abs() < 1e-9,
                "seed {seed} k {k}: {} vs {cost}",
                got.cost
            );
            // The returned cuts achieve that optimum (ties may pick other cuts than `starts`).
            assert!((cost_of(&sim, &got.starts) - cost).abs() < 1e-9 && got.starts[0] == 0);
            assert!(got.starts.windows(2).all(|w| w[0] < w[1]) && starts.len() == k);
        }
    }
}

#[test]
fn block_structure_is_recovered() {
    let phase = |i: usize| [0, 0, 0, 1, 1, 1, 1, 2, 2, 2][i];
    let sim = Mat::from_fn(10, 10, |i, j| if phase(i) == phase(j) { 0.9 } else { 0.1 });
    assert_eq!(segment(&sim, 3).unwrap().starts, vec![0, 3, 7]);
    assert!(segment(&sim, 0).is_err() && segment(&sim, 11).is_err());
}

#[test]
fn colour_map_is_blue_white_red() {
    let (b, w, r) = (diverging(-1.0), diverging(0.0), diverging(1.0));
    assert!(b.2 > b.0 && r.0 > r.2);
    assert!(w.0 > 240 && w.1 > 240 && w.2 > 240);
    assert_eq!(diverging(5.0), r);
}

#[test]
fn heatmaps_are_written_as_png_and_svg() {
    let dir = std::env::temp_dir().join(format!("tensim-fig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sim = Mat::from_fn(6, 6, |i, j| if (i < 3) == (j < 3) { 0.8 } else { -0.3 });
    let opts = HeatmapOptions {
        title: "tensor similarity".into(),
        labels: (0..6).map(|i| format!("{}", i * 10)).collect(),
        steps: Some((0..6).map(|i| (i * 10) as f64).collect()),
        log_steps: true,
        boundaries: vec![3],
    };
    let png_path = dir.join("m.png");
    heatmap(&sim, &png_path, &opts).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!((info.width, info.height), (960, 820));
    let svg_path = dir.join("m.svg");
    heatmap(
        &sim,
        &svg_path,
        &HeatmapOptions {
            log_steps: false,
            ..opts.clone()
        },
    )
    .unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("tensor similarity")
            && svg.matches("<rect").count() >= 36
    );
    assert!(heatmap(&sim, &dir.join("m.jpg"), &opts)
        .unwrap_err()
        .to_string()
        .contains(".png or .svg"));
    assert!(heatmap(&sim, &dir.join("missing/m.png"), &opts)
        .unwrap_err()
        .to_string()
        .contains("does not exist"));
    let bad = HeatmapOptions {
        steps: None,
        ..opts
    };
    assert!(heatmap(&sim, &png_path, &bad).is_err());
}
