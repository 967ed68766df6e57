//! Detector benchmarks: `cargo bench --bench detector`.
//!
//! - training time with the full paper grid (100 points × 5 folds) on 400
//!   windows × 5 features and × 3,084 features (every QEMU probe);
//! - detection latency per window.
//!
//! Data are synthetic counts (deterministic), shaped like recorded windows:
//! per-feature rates spanning orders of magnitude with Poisson-like noise.

use std::time::Instant;

use ndarray::Array2;
use vmwatch_core::model::{Model, TrainingSummary};
use vmwatch_core::train::{grid_search, Folds, Grid};

fn windows(rows: usize, features: usize, seed: u64) -> Array2<f64> {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    Array2::from_shape_fn((rows, features), |(_, j)| {
        let rate = 10f64.powf((j % 7) as f64);
        (rate * (0.8 + 0.4 * next())).round()
    })
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("detector bench: run with `cargo bench --bench detector`");
        return;
    }
    println!(
        "machine: {} CPUs; grid search uses all of them",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for features in [5usize, 3084] {
        let x = windows(400, features, 7);
        let points = Grid::Paper.points();
        let t = Instant::now();
        let folds = Folds::contiguous(x.nrows(), 5).unwrap();
        let (best, _) = grid_search(x.view(), &folds, &points, &|| {}).unwrap();
        let grid_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let model = Model::fit(
            (0..features).map(|j| format!("qemu:f{j}")).collect(),
            x.view(),
            best.nu,
            best.gamma,
            TrainingSummary::default(),
        )
        .unwrap();
        let fit_ms = t.elapsed().as_secs_f64() * 1e3;
        let probe = windows(1, features, 99);
        let reps = 200;
        let mut lat = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            std::hint::black_box(model.decisions(probe.view()));
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "400 windows x {features:4} features: grid search {grid_s:7.1} s (100 points x 5 folds), \
             final fit {fit_ms:7.1} ms, {} support vectors, detection {:.1} us/window (median of {reps})",
            model.svm.coef.len(),
            lat[reps / 2]
        );
    }
}
