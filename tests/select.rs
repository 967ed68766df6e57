//! `vmwatch select` on small hand-made datasets: the separating feature is
//! named for its pair, `-o` writes the union, bad input fails cleanly.

mod common;

use std::path::{Path, PathBuf};

use common::{run, write_dataset, Feature, Ran, Run};

/// Baseline plus two stress files: `qemu:tap_send` (absent from the
/// baseline) separates stress-net, `qemu:bdrv_aio_flush` separates
/// stress-io; `qemu:noise` has the same distribution everywhere.
fn scenario(dir: &Path) -> [PathBuf; 3] {
    let noise = |i: usize| (i * 7 % 5 + 10) as u64;
    let idle = write_dataset(
        &dir.join("idle.csv"),
        |_| "idle".into(),
        20,
        &[
            ("qemu:noise", &noise),
            ("qemu:bdrv_aio_flush", &|i| (i % 3) as u64),
            ("qemu:never", &|_| 0),
        ],
    );
    let net = write_dataset(
        &dir.join("net.csv"),
        |_| "stress-net".into(),
        20,
        &[
            ("qemu:noise", &noise),
            ("qemu:tap_send", &|i| (5000 + i * 13 % 17) as u64),
            ("qemu:bdrv_aio_flush", &|i| (i % 3) as u64),
        ],
    );
    let io = write_dataset(
        &dir.join("stress-io.csv"),
        |i| if i < 10 { "io-a".into() } else { "io-b".into() },
        20,
        &[
            ("qemu:noise", &noise),
            ("qemu:bdrv_aio_flush", &|i| (300 + i % 4) as u64),
        ],
    );
    [idle, net, io]
}

/// `vmwatch select --baseline BASELINE`.
fn select(baseline: &Path) -> Run {
    run("select --baseline").arg(baseline)
}

/// The rows of the leading (Table 1) table: pair → (feature, score).
fn table1(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .skip_while(|l| !l.starts_with("pair"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[0].into(), c[1].into(), c[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn names_the_separating_feature_per_pair() {
    let dir = tempfile::tempdir().unwrap();
    let [idle, net, io] = scenario(dir.path());
    let text = select(&idle).arg(&net).arg(&io).succeeds().stdout;
    assert!(text.contains("ln(1+x)"), "{text}");
    let rows = table1(&text);
    assert_eq!(rows.len(), 2, "{text}");
    // Pair named by its label; the other file's labels differ: its stem.
    assert_eq!(rows[0].0, "stress-net");
    assert_eq!(rows[0].1, "qemu:tap_send");
    assert!(rows[0].2 > 0.99, "{text}");
    assert_eq!(rows[1].0, "stress-io");
    assert_eq!(rows[1].1, "qemu:bdrv_aio_flush");
    assert!(rows[1].2 > 0.95, "{text}");
    // A feature zero in both files is dropped; without -o the union is printed.
    assert!(!text.contains("qemu:never"), "{text}");
    let union: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("selected features"))
        .skip(1)
        .collect();
    // Pair order, then selection order (a later pick may add little).
    assert_eq!(
        union[..2],
        ["qemu:tap_send", "qemu:bdrv_aio_flush"],
        "{text}"
    );
}

#[test]
fn output_file_holds_the_union() {
    let dir = tempfile::tempdir().unwrap();
    let [idle, net, io] = scenario(dir.path());
    let list = dir.path().join("features.txt");
    let report = select(&idle)
        .arg(&net)
        .arg(&io)
        .args("--top 2 --raw")
        .out(&list)
        .succeeds()
        .stdout;
    assert!(report.contains("raw counts"));
    assert!(!report.contains("selected features"));
    let text = std::fs::read_to_string(&list).unwrap();
    assert!(text.starts_with("# vmwatch select: baseline "), "{text}");
    assert!(
        text.contains("idle.csv") && text.contains("net.csv"),
        "{text}"
    );
    let names: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(names.contains(&"qemu:tap_send"), "{text}");
    assert!(names.contains(&"qemu:bdrv_aio_flush"), "{text}");
    assert!(!names.contains(&"qemu:never"), "{text}");
    // No temporary file left beside it.
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 4);
}

/// Runs `cmd`: it must fail with one sentence, which names `needle`.
fn fails_with(cmd: Run, needle: &str) {
    let ran: Ran = cmd.fails_with(needle);
    assert!(
        ran.sentence().contains(needle),
        "{needle:?} not in {}",
        ran.stderr
    );
}

#[test]
fn missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let [idle, ..] = scenario(dir.path());
    fails_with(select(&idle).arg(dir.path().join("nope.csv")), "nope.csv");
}

#[test]
fn malformed_csv_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let [idle, net, _] = scenario(dir.path());
    let mut text = std::fs::read_to_string(&net).unwrap();
    text.push_str("vm1,42,stress-net,20,0,2000,x,1,2\n");
    std::fs::write(&net, text).unwrap();
    fails_with(select(&idle).arg(&net), "line 22");
}

#[test]
fn too_few_rows_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let [idle, _, io] = scenario(dir.path());
    let short = write_dataset(&dir.path().join("short.csv"), |_| "s".into(), 3, &[]);
    fails_with(select(&idle).arg(&io).arg(&short), "short.csv has 3 rows");
    // --min-rows lowers the bar.
    let ran = select(&idle).arg(&short).args("--min-rows 3").succeeds();
    // A file without feature columns is all zeros: the baseline's busy
    // probe tells them apart.
    let rows = table1(&ran.stdout);
    assert_eq!(rows[0].0, "s");
    assert_eq!(rows[0].1, "qemu:noise");
}

#[test]
fn identical_files_select_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let [idle, ..] = scenario(dir.path());
    let text = select(&idle).arg(&idle).succeeds().stdout;
    assert_eq!(table1(&text), [("idle".into(), "(none)".into(), 0.0)]);
    assert!(text.contains("no feature separates"), "{text}");
}

#[test]
fn budget_leaves_out_probes_that_cost_too_much() {
    let dir = tempfile::tempdir().unwrap();
    let [idle, net, io] = scenario(dir.path());
    let select = |extra: &str| {
        let list = dir.path().join("features.txt");
        let ran = select(&idle)
            .arg(&net)
            .arg(&io)
            .args("--top 2")
            .args(extra)
            .out(&list)
            .succeeds();
        let text = std::fs::read_to_string(&list).unwrap();
        let names: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        (ran.stdout, names)
    };
    // qemu:tap_send: ~5,000 hits per 2-s window of net.csv = 2,500/s, 0.25%
    // of a CPU at 1 µs; qemu:bdrv_aio_flush: 150/s, 0.015%.
    let (report, names) = select("");
    assert!(names.contains(&"qemu:tap_send".to_string()), "{names:?}");
    assert!(report.contains("cost of the selection"), "{report}");
    let (report, names) = select("--budget 0.1");
    assert!(!names.contains(&"qemu:tap_send".to_string()), "{names:?}");
    assert!(
        names.contains(&"qemu:bdrv_aio_flush".to_string()),
        "{names:?}"
    );
    assert!(report.contains("(budget 0.1%)"), "{report}");
    // A cheaper hit makes tap_send affordable again.
    let (_, names) = select("--budget 0.1 --hit-cost 300");
    assert!(names.contains(&"qemu:tap_send".to_string()), "{names:?}");
}

#[test]
fn bad_budget_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let [idle, net, _] = scenario(dir.path());
    for bad in ["--budget -1", "--budget lots", "--hit-cost 0"] {
        let ran = select(&idle).arg(&net).args(bad).output();
        assert!(!ran.status.success(), "{bad:?} accepted");
        assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    }
}

#[test]
fn budget_charges_the_probes_a_sequence_feature_reads() {
    // seq:tap_send>tap_send separates stress-net; qemu:tap_send fires
    // 2,500 times a second in both files and separates nothing. The
    // transition needs tap_send's hits trapped: 0.25% of a CPU at 1 µs,
    // plus 25 ns a hit for tracking it.
    let dir = tempfile::tempdir().unwrap();
    let hot = |i: usize| (5000 + i * 7 % 5) as u64;
    let idle = write_dataset(
        &dir.path().join("idle.csv"),
        |_| "idle".into(),
        20,
        &[("qemu:tap_send", &hot), ("seq:tap_send>tap_send", &|_| 0)],
    );
    let net = write_dataset(
        &dir.path().join("net.csv"),
        |_| "stress-net".into(),
        20,
        &[
            ("qemu:tap_send", &hot),
            ("seq:tap_send>tap_send", &|i| (4000 + i % 3) as u64),
        ],
    );
    let picked = |budget: &str| {
        let ran = select(&idle).arg(&net).args(budget).succeeds();
        let chosen = ran.stdout.contains("\nseq:tap_send>tap_send");
        (chosen, ran.stdout)
    };
    let (chosen, report) = picked("--budget 0.2");
    assert!(!chosen, "a 0.26% feature within 0.2%: {report}");
    let (chosen, report) = picked("--budget 0.3");
    assert!(chosen, "{report}");
    assert!(
        report.contains("probe hits 0.250%, seq tracking 0.006%"),
        "{report}"
    );
}

#[test]
fn a_selected_transition_keeps_its_tracked_set() {
    // Both files tracked a and b (every transition a column); seq:a>a
    // separates stress-net. The list names only a, so it says in track:
    // lines that b was tracked too, and train takes it back.
    let dir = tempfile::tempdir().unwrap();
    let noise = |i: usize| (i * 7 % 5 + 10) as u64;
    let tracked = |aa: &'static dyn Fn(usize) -> u64| -> Vec<Feature<'static>> {
        let noise: &'static dyn Fn(usize) -> u64 = &|i| (i * 7 % 5 + 10) as u64;
        vec![
            ("qemu:a", noise),
            ("seq:a>a", aa),
            ("seq:a>b", noise),
            ("seq:b>a", noise),
            ("seq:b>b", noise),
        ]
    };
    let idle = write_dataset(
        &dir.path().join("idle.csv"),
        |_| "idle".into(),
        20,
        &tracked(&|i| (i % 3) as u64),
    );
    let net = write_dataset(
        &dir.path().join("net.csv"),
        |_| "stress-net".into(),
        20,
        &tracked(&|i| (900 + i % 7) as u64),
    );
    let list = dir.path().join("list.txt");
    select(&idle).arg(&net).arg("-o").arg(&list).succeeds();
    let text = std::fs::read_to_string(&list).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines[0], "seq:a>a", "{text}");
    assert!(
        lines.ends_with(&["track:a", "track:b"]),
        "the tracked set is not in the list: {text}"
    );
    run("train --folds 2 --nu 0.1 --gamma 0.1 --features")
        .arg(&list)
        .arg("-o")
        .arg(dir.path().join("m.json"))
        .arg(&idle)
        .succeeds();
    // Files that tracked only a: the same name counts other pairs.
    let only_a = write_dataset(
        &dir.path().join("only-a.csv"),
        |_| "idle".into(),
        20,
        &[("qemu:a", &noise), ("seq:a>a", &noise)],
    );
    fails_with(
        run("train --folds 2 --nu 0.1 --gamma 0.1 --features")
            .arg(&list)
            .arg("-o")
            .arg(dir.path().join("m2.json"))
            .arg(&only_a),
        "the feature list's seq: features were counted among the tracked probes a, b but the \
         input files tracked a",
    );
    // And select refuses files that tracked different sets.
    fails_with(
        select(&idle).arg(&only_a),
        "tracked the probes [a] for seq: transitions but",
    );
}
