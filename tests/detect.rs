//! `vmwatch train` and `vmwatch detect` end to end on generated datasets:
//! normal windows around a fixed profile, anomalous ones with one feature
//! a hundred times busier.

mod common;

use std::path::{Path, PathBuf};

use common::{around, run, train, write_dataset, Run, HEAD};

/// A deterministic dataset: `rows` windows, three features, `tap_send`
/// `boost` times its normal count.
fn dataset(dir: &Path, name: &str, label: &str, rows: usize, boost: u64) -> PathBuf {
    let tap_send = around(200, 13, 29);
    write_dataset(
        &dir.join(name),
        |_| label.to_string(),
        rows,
        &[
            ("qemu:virtqueue_fill", &around(1000, 37, 101)),
            ("qemu:tap_send", &|w| tap_send(w) * boost),
            ("sys:ppoll", &around(5000, 71, 307)),
        ],
    )
}

/// `vmwatch detect --model MODEL DATA`.
fn detect(model: &Path, data: &Path) -> Run {
    run("detect --model").arg(model).arg(data)
}

#[test]
fn train_then_detect_flags_the_anomaly_not_the_normal() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dataset(dir.path(), "web.csv", "web", 200, 1);
    let held = dataset(dir.path(), "web2.csv", "web", 50, 1);
    let attack = dataset(dir.path(), "flood.csv", "synflood", 50, 100);
    let model = dir.path().join("model.json");
    // Raw verdicts (the default smoothing, 2/3, would pass the first flood
    // window).
    let stdout = train(&normal, "--smooth 1/1", &model).succeeds().stdout;
    assert!(stdout.contains("false positives"), "{stdout}");

    let verdicts = detect(&model, &held)
        .arg(&attack)
        .arg("--json")
        .succeeds()
        .json_lines();
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
    train(&normal, "--nu 0.05 --gamma 0.1", &model).succeeds();
    let verdicts = detect(&model, &attack)
        .args("--smooth 3/5 --json")
        .succeeds()
        .json_lines();
    let flags: Vec<bool> = verdicts.iter().map(|v| v["anomalous"] == true).collect();
    // The first two windows cannot have 3 anomalies among their last 5.
    assert_eq!(flags[..3], [false, false, true]);
    assert!(flags[2..].iter().all(|f| *f));
}

#[test]
fn a_model_for_other_features_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dataset(dir.path(), "web.csv", "web", 60, 1);
    let model = dir.path().join("m.json");
    train(&normal, "--nu 0.05 --gamma 0.1", &model).succeeds();
    let other = dir.path().join("kvm.csv");
    std::fs::write(&other, format!("{HEAD},kvm:kvm_pio\nvm1,1,x,0,0,2000,5\n")).unwrap();
    detect(&model, &other).fails_with("has none of the model's 3 features");

    std::fs::write(&model, "{\"format\": \"something-else\"}").unwrap();
    detect(&model, &normal).fails_with("is not a usable model");
}

#[test]
fn training_on_too_little_or_broken_data_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let small = dataset(dir.path(), "small.csv", "web", 5, 1);
    let model = dir.path().join("m.json");
    train(&small, "", &model).fails_with("too few");
    assert!(!model.exists(), "no model file on failure");
    let broken = dir.path().join("broken.csv");
    std::fs::write(&broken, format!("{HEAD},qemu:a\nvm,1,web,0,0,2000,-3\n")).unwrap();
    train(&broken, "", &model).fails_with("line 2: column 7 (`qemu:a`): `-3`");
}

#[test]
fn eval_reports_the_papers_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dataset(dir.path(), "web.csv", "web", 200, 1);
    let flood = dataset(dir.path(), "flood.csv", "synflood-target", 50, 100);
    let peak = dataset(dir.path(), "peak.csv", "web-peak", 50, 5);
    let report = run("eval --nu 0.05 --gamma 0.1 --smooth 1/1")
        .arg("--normal")
        .arg(&normal)
        .arg("--anomaly")
        .arg(&flood)
        .arg("--relearn")
        .arg(&peak)
        .arg("--plots")
        .arg(dir.path().join("fig"))
        .succeeds()
        .stdout;
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
    // Nested: each outer fold's choice is reported (fixed here).
    assert!(
        report.contains("| 5 | 3 | 0.05 | 0.1 | — |"),
        "fold choices: {report}"
    );
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

/// A phased boot (as `cargo xtask lab record --phases` writes it): `rows`
/// windows of `web`, of which `attack` (if any) are `scenario` windows with
/// `tap_send` a hundred times busier, the one before them a `switch`.
fn phased(
    dir: &Path,
    name: &str,
    rows: usize,
    attack: Option<(&'static str, std::ops::Range<usize>)>,
) -> PathBuf {
    let tap_send = around(200, 13, 29);
    let a = attack.clone();
    let label = move |w: usize| match &a {
        Some((_, r)) if w + 1 == r.start => "switch".to_string(),
        Some((s, r)) if r.contains(&w) => s.to_string(),
        _ => "web".to_string(),
    };
    let hot = move |w: usize| match &attack {
        Some((_, r)) if r.contains(&w) => 100,
        _ => 1,
    };
    write_dataset(
        &dir.join(name),
        label,
        rows,
        &[
            ("qemu:virtqueue_fill", &around(1000, 37, 101)),
            ("qemu:tap_send", &|w| tap_send(w) * hot(w)),
            ("sys:ppoll", &around(5000, 71, 307)),
        ],
    )
}

#[test]
fn eval_by_boot_holds_each_boot_out() {
    let dir = tempfile::tempdir().unwrap();
    let flood = phased(
        dir.path(),
        "flood.csv",
        120,
        Some(("synflood-target", 60..80)),
    );
    let scan = phased(
        dir.path(),
        "scan.csv",
        120,
        Some(("portscan-target", 30..50)),
    );
    let calm = phased(dir.path(), "calm.csv", 100, None);
    let report = run("eval --nu 0.05 --gamma 0.1 --smooth 1/1")
        .arg("--boot")
        .arg(&flood)
        .arg("--boot")
        .arg(&scan)
        .arg("--boot")
        .arg(&calm)
        .succeeds()
        .stdout;
    assert!(report.contains("By boot: 3 boots"), "{report}");
    // Each boot's row: 99 normal windows, 20 anomalous (all caught), 1 switch.
    let boot_row = |file: &Path| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", file.display())))
            .unwrap_or_else(|| panic!("no row of {}: {report}", file.display()))
            .to_string()
    };
    let row = boot_row(&flood);
    assert!(
        row.contains("| synflood-target | 99 |") && row.contains("| 20 | 20 | 1 |"),
        "{row}"
    );
    assert!(boot_row(&calm).contains("| — | 100 |"), "{report}");
    // The scenarios' rows: their own boot's windows, summed.
    let scenario = report
        .lines()
        .find(|l| l.starts_with("| portscan-target | 20 |"))
        .unwrap_or_else(|| panic!("no scenario row: {report}"));
    assert!(scenario.contains("| 20.0 |"), "{scenario}");
    assert!(report.contains("Median over 2 scenarios"), "{report}");

    // One boot cannot be held out against the others; the two protocols
    // do not mix.
    run("eval --nu 0.05 --gamma 0.1 --boot")
        .arg(&flood)
        .fails_with("at least 2");
    // (clap's usage error, not one of vmwatch's sentences.)
    let both = run("eval --normal")
        .arg(&calm)
        .arg("--boot")
        .arg(&flood)
        .output();
    assert!(
        !both.status.success() && both.stderr.contains("cannot be used with"),
        "{}",
        both.stderr
    );
}

/// The lab's boots in data/boots (real lab boots): `eval --boot` holds
/// each of the 19 attack and web boots out, and its per-boot counts of
/// normal, anomalous and switch windows are the lab manifest's labels; the
/// 2 web-peak boots go to the re-learning experiment.
#[test]
fn eval_by_boot_on_the_labs_boots_matches_the_manifests_labels() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/boots");
    let mut boots = Vec::new();
    let mut peaks = Vec::new();
    let mut expected = Vec::new();
    for manifest in [
        "MANIFEST-attacks.json",
        "MANIFEST-web.json",
        "MANIFEST-web-peak.json",
    ] {
        let text = std::fs::read_to_string(dir.join(manifest)).unwrap();
        let m: serde_json::Value = serde_json::from_str(&text).unwrap();
        for s in m["scenarios"].as_array().unwrap() {
            let file = dir.join(s["file"].as_str().unwrap());
            let labels = &s["labels"];
            let n = |l: &str| labels.get(l).and_then(|v| v.as_u64()).unwrap_or(0);
            let rows = s["rows"].as_u64().unwrap();
            // Whole boots (web) have no labels: every window is normal.
            let normal = if labels.as_object().unwrap().is_empty() {
                rows
            } else {
                n("web")
            };
            let name = s["name"].as_str().unwrap();
            if name == "web-peak" {
                peaks.push(file);
                continue;
            }
            expected.push((file.clone(), normal, n(name), n("switch")));
            boots.push(file);
        }
    }
    assert_eq!((boots.len(), peaks.len()), (19, 2));
    let mut cmd = run("eval --nu 0.05 --gamma 0.01 --curve-boots 1");
    for b in &boots {
        cmd = cmd.arg("--boot").arg(b);
    }
    for p in &peaks {
        cmd = cmd.arg("--relearn-boot").arg(p);
    }
    let report = cmd.succeeds().stdout;
    for (file, normal, anomalous, switch) in expected {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", file.display())))
            .unwrap_or_else(|| panic!("no row of {}: {report}", file.display()));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | boot | anomaly | normal | FP | anomalous | detected | switch | …
        assert_eq!(
            (cells[3], cells[5], cells[7]),
            (
                normal.to_string().as_str(),
                anomalous.to_string().as_str(),
                switch.to_string().as_str()
            ),
            "{row}"
        );
    }
    assert!(report.contains("Median over 8 scenarios"), "{report}");
    assert!(report.contains("Re-learning with the boots"), "{report}");
    let curve = report
        .split("Learning curve by boot")
        .nth(1)
        .unwrap_or_else(|| panic!("no learning curve by boot: {report}"));
    assert!(
        curve.lines().any(|l| l.starts_with("| 1 | ")),
        "no learning-curve row of 1 boot: {report}"
    );
}
