//! vmwatch's one-class SVM (linfa-svm underneath) against scikit-learn's
//! OneClassSVM on the same inputs: decision signs must agree on ≥ 99% of
//! the reference points (scripts/sklearn_reference.py made the file).

use ndarray::Array2;
use vmwatch_core::model::OneClassSvm;

fn matrix(rows: &serde_json::Value) -> Array2<f64> {
    let rows = rows.as_array().unwrap();
    let cols = rows[0].as_array().unwrap().len();
    let flat: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    Array2::from_shape_vec((rows.len(), cols), flat).unwrap()
}

#[test]
fn decisions_agree_with_scikit_learn() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ocsvm_reference.json"
    ))
    .unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let (nu, gamma) = (
            case["nu"].as_f64().unwrap(),
            case["gamma"].as_f64().unwrap(),
        );
        let train = matrix(&case["train"]);
        let test = matrix(&case["test"]);
        let svm = OneClassSvm::fit(&train, nu, gamma).unwrap();
        let expected: Vec<f64> = case["decision"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let agree = test
            .rows()
            .into_iter()
            .zip(&expected)
            .filter(|(row, want)| (svm.decision(*row) >= 0.0) == (**want >= 0.0))
            .count();
        let share = agree as f64 / expected.len() as f64;
        let outside = expected.iter().filter(|d| **d < 0.0).count();
        eprintln!(
            "nu={nu} gamma={gamma} dims={}: {agree}/{} signs agree ({outside} outside per sklearn)",
            train.ncols(),
            expected.len()
        );
        assert!(
            share >= 0.99,
            "only {:.2}% agree for nu={nu} gamma={gamma}",
            share * 100.0
        );
        // Both sides of the boundary are exercised.
        assert!(outside > 20 && outside < expected.len() - 20);
    }
}
