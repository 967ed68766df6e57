//! `vmwatch train` and `vmwatch detect` end to end on generated datasets:
//! normal windows around a fixed profile, anomalous ones with one feature
//! a hundred times busier.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::vmwatch;

const HEAD: &str = "vm,pid,label,window,start_unix_ms,duration_ms";

/// A deterministic dataset: `rows` windows, three features.
fn dataset(dir: &Path, name: &str, label: &str, rows: u32, boost: u64) -> PathBuf {
    let mut text = format!("{HEAD},qemu:virtqueue_fill,qemu:tap_send,sys:ppoll\n");
    for w in 0..rows {
        let a = 1000 + u64::from(w * 37 % 101);
        let b = (200 + u64::from(w * 13 % 29)) * boost;
        let c = 5000 + u64::from(w * 71 % 307);
        writeln!(
            text,
            "vm1,42,{label},{w},{},2000,{a},{b},{c}",
            1000 + u64::from(w) * 2000
        )
        .unwrap();
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run(args: &[&std::ffi::OsStr]) -> std::process::Output {
    vmwatch().args(args).output().unwrap()
}

#[test]
fn train_then_detect_flags_the_anomaly_not_the_normal() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dataset(dir.path(), "web.csv", "web", 200, 1);
    let held = dataset(dir.path(), "web2.csv", "web", 50, 1);
    let attack = dataset(dir.path(), "flood.csv", "synflood", 50, 100);
    let model = dir.path().join("model.json");
    let out = run(&[
        "train".as_ref(),
        normal.as_os_str(),
        "-o".as_ref(),
        model.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("false positives"), "{stdout}");

    let out = run(&[
        "detect".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--json".as_ref(),
        held.as_os_str(),
        attack.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), 100);
    let flagged = |label: &str| {
        verdicts
            .iter()
            .filter(|v| v["label"] == label && v["anomalous"] == true)
            .count()
    };
    assert_eq!(flagged("synflood"), 50, "every flood window is anomalous");
    assert!(
        flagged("web") <= 3,
        "{} of 50 normal windows flagged",
        flagged("web")
    );
    for key in ["start_unix_ms", "vm", "pid", "window", "score"] {
        assert!(verdicts[0].get(key).is_some(), "{key} missing");
    }
}

#[test]
fn smoothing_needs_k_of_n() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dataset(dir.path(), "web.csv", "web", 100, 1);
    let attack = dataset(dir.path(), "flood.csv", "synflood", 10, 100);
    let model = dir.path().join("m.json");
    let out = run(&[
        "train".as_ref(),
        normal.as_os_str(),
        "--nu".as_ref(),
        "0.05".as_ref(),
        "--gamma".as_ref(),
        "0.1".as_ref(),
        "-o".as_ref(),
        model.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "detect".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--smooth".as_ref(),
        "3/5".as_ref(),
        "--json".as_ref(),
        attack.as_os_str(),
    ]);
    assert!(out.status.success());
    let flags: Vec<bool> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["anomalous"] == true)
        .collect();
    // The first two windows cannot have 3 anomalies among their last 5.
    assert_eq!(flags[..3], [false, false, true]);
    assert!(flags[2..].iter().all(|f| *f));
}

#[test]
fn a_model_for_other_features_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dataset(dir.path(), "web.csv", "web", 60, 1);
    let model = dir.path().join("m.json");
    let out = run(&[
        "train".as_ref(),
        normal.as_os_str(),
        "--nu".as_ref(),
        "0.05".as_ref(),
        "--gamma".as_ref(),
        "0.1".as_ref(),
        "-o".as_ref(),
        model.as_os_str(),
    ]);
    assert!(out.status.success());
    let other = dir.path().join("kvm.csv");
    std::fs::write(&other, format!("{HEAD},kvm:kvm_pio\nvm1,1,x,0,0,2000,5\n")).unwrap();
    let out = run(&[
        "detect".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        other.as_os_str(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has none of the model's 3 features"), "{err}");

    std::fs::write(&model, "{\"format\": \"something-else\"}").unwrap();
    let out = run(&[
        "detect".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        normal.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a usable model"));
}

#[test]
fn training_on_too_little_or_broken_data_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let small = dataset(dir.path(), "small.csv", "web", 5, 1);
    let model = dir.path().join("m.json");
    let out = run(&[
        "train".as_ref(),
        small.as_os_str(),
        "-o".as_ref(),
        model.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("too few"));
    assert!(!model.exists(), "no model file on failure");
    let broken = dir.path().join("broken.csv");
    std::fs::write(&broken, format!("{HEAD},qemu:a\nvm,1,web,0,0,2000,-3\n")).unwrap();
    let out = run(&[
        "train".as_ref(),
        broken.as_os_str(),
        "-o".as_ref(),
        model.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 2: column 7 (`qemu:a`): `-3`"), "{err}");
}

#[test]
fn eval_reports_the_papers_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dataset(dir.path(), "web.csv", "web", 200, 1);
    let flood = dataset(dir.path(), "flood.csv", "synflood-target", 50, 100);
    let peak = dataset(dir.path(), "peak.csv", "web-peak", 50, 5);
    let out = run(&[
        "eval".as_ref(),
        "--normal".as_ref(),
        normal.as_os_str(),
        "--anomaly".as_ref(),
        flood.as_os_str(),
        "--nu".as_ref(),
        "0.05".as_ref(),
        "--gamma".as_ref(),
        "0.1".as_ref(),
        "--relearn".as_ref(),
        peak.as_os_str(),
        "--plots".as_ref(),
        dir.path().join("fig").as_os_str(),
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = report
        .lines()
        .find(|l| l.starts_with("| synflood-target |"))
        .unwrap_or_else(|| panic!("no scenario row: {report}"));
    // 50 windows in 5 folds: 10 attack windows per fold, all caught.
    assert!(
        row.contains("| 10.0 |") && row.contains("| 100.0% |"),
        "{row}"
    );
    assert!(
        report.contains("Median over 1 scenarios: F-measure"),
        "{report}"
    );
    assert!(report.contains("| 100 |"), "learning curve row: {report}");
    assert!(report.contains("Re-learning with"), "{report}");
    for fig in ["learning-curve.svg", "scenarios.svg"] {
        let svg = std::fs::read_to_string(dir.path().join("fig").join(fig)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{fig}");
    }
    let bars = std::fs::read_to_string(dir.path().join("fig/scenarios.svg")).unwrap();
    assert!(
        bars.contains("synflood-target"),
        "scenario named on the axis"
    );
}
