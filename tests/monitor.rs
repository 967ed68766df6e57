//! `vmwatch monitor` live on the fixture: trained on a steady probe rate,
//! it calls a burst anomalous, keeps going when a watched process exits,
//! and prints JSON lines; a VM whose QEMU lacks probes the model relies on
//! is refused (skipped under `--all`) unless `--allow-missing-features`,
//! and another QEMU build is warned about. Run as root.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{finish, recording, run, train, Fixture};

/// Fires a steady ~25 tap_send per 100 ms until `stop`.
fn steady(mut fx: Fixture, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Fixture> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            fx.fire("tap_send", 25);
            std::thread::sleep(Duration::from_millis(100));
        }
        fx
    })
}

#[test]
fn monitor_flags_a_burst_and_survives_an_exit() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let normal = dir.path().join("normal.csv");
    let model = dir.path().join("model.json");

    // Learn the steady rate: 40 windows of 200 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let fx = Fixture::start();
    let pid = fx.pid;
    let worker = steady(fx, stop.clone());
    finish(recording(&[pid], "--interval 200ms --windows 40", &normal));
    train(&normal, "--nu 0.05 --gamma 0.5", &model).succeeds();

    // Monitor the same process plus one that will exit.
    let leaver = Fixture::start();
    let mut mon = run("monitor --json --interval 200ms --windows 25 --model")
        .arg(&model)
        .pid(pid)
        .pid(leaver.pid)
        .spawn_reading_stdout();
    let stdout = BufReader::new(mon.stdout.take().unwrap());
    let mut lines = stdout.lines();
    let mut verdicts = Vec::new();
    // Five quiet windows, then stop the steady load and burst.
    for _ in 0..10 {
        verdicts.push(lines.next().unwrap().unwrap());
    }
    leaver.exit();
    stop.store(true, Ordering::Relaxed);
    let mut fx = worker.join().unwrap();
    fx.burn("tap_send", 1500);
    for line in lines {
        verdicts.push(line.unwrap());
    }
    let status = mon.wait().unwrap();
    assert!(status.success());
    let parsed: Vec<serde_json::Value> = verdicts
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mine: Vec<&serde_json::Value> = parsed.iter().filter(|v| v["pid"] == pid).collect();
    assert_eq!(
        mine.len(),
        25,
        "one verdict per window for the process that stayed"
    );
    for key in ["start_unix_ms", "vm", "window", "score", "anomalous"] {
        assert!(mine[0].get(key).is_some(), "{key} missing");
    }
    let early_alarms = mine[..5].iter().filter(|v| v["anomalous"] == true).count();
    assert!(
        early_alarms <= 1,
        "{early_alarms} of 5 steady windows flagged"
    );
    let burst_alarms = mine[6..].iter().filter(|v| v["anomalous"] == true).count();
    assert!(
        burst_alarms >= 5,
        "only {burst_alarms} anomalous windows during the burst"
    );
}

/// A model of `tap_send` (which the fixture has) and `exec_tb` and
/// `x86_pic_interrupt` (which it lacks), trained on 40 windows counted on
/// QEMU builds `1111` then `2222`; `exec_tb` is nonzero there when
/// `exec_tb_seen`, `x86_pic_interrupt` never is.
fn model_of_absent_probes(dir: &std::path::Path, exec_tb_seen: bool) -> std::path::PathBuf {
    let data = dir.join(format!("normal-{exec_tb_seen}.csv"));
    let model = dir.join(format!("model-{exec_tb_seen}.json"));
    let exec_tb = move |i: usize| {
        if exec_tb_seen {
            5000 + (i * 13 % 29) as u64
        } else {
            0
        }
    };
    common::write_dataset(
        &data,
        |_| "web".into(),
        40,
        &[
            ("qemu_build_id", &|i| if i < 20 { 1111 } else { 2222 }),
            ("qemu:tap_send", &common::around(1000, 37, 101)),
            ("qemu:exec_tb", &exec_tb),
            ("qemu:x86_pic_interrupt", &|_| 0),
        ],
    );
    let list = common::feature_list(dir, "qemu:tap_send\nqemu:exec_tb\nqemu:x86_pic_interrupt\n");
    run("train")
        .arg(&data)
        .args("--nu 0.05 --gamma 0.5 --features")
        .arg(list)
        .out(&model)
        .succeeds();
    model
}

/// A model that relies on a probe the VM's QEMU lacks is refused with one
/// sentence naming it; --allow-missing-features judges the VM anyway and
/// says in each verdict how many features are missing; a missing probe the
/// model never saw nonzero only warns. The model lists the QEMU builds of
/// its training rows, and another build is warned about.
#[test]
fn monitor_refuses_a_vm_whose_qemu_lacks_the_models_features() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let relying = model_of_absent_probes(dir.path(), true);
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&relying).unwrap()).unwrap();
    assert_eq!(
        model["training"]["qemu_builds"],
        serde_json::json!([
            {"build_id": "1111", "version": null},
            {"build_id": "2222", "version": null}
        ])
    );
    let fx = Fixture::start();
    let monitor = |model: &std::path::Path, options: &str| {
        run("monitor --interval 200ms --windows 3")
            .args(options)
            .arg("--model")
            .arg(model)
            .pid(fx.pid)
    };

    let refused = monitor(&relying, "--json").fails_with(&format!(
        "(PID {}): its QEMU lacks 1 of the features the model relies on (qemu:exec_tb); train a \
         model on this QEMU, or pass --allow-missing-features",
        fx.pid
    ));
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);

    let ran = monitor(&relying, "--json --allow-missing-features").succeeds();
    let lines = ran.json_lines();
    assert_eq!(lines.len(), 3, "{}", ran.stdout);
    assert!(
        lines.iter().all(|v| v["missing_features"] == 2),
        "{}",
        ran.stdout
    );
    let warned: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|l| l.contains("its QEMU lacks"))
        .collect();
    assert_eq!(warned.len(), 1, "one warning per VM: {}", ran.stderr);
    for part in [
        "lacks 2 of the model's 3 features, read as zero (qemu:exec_tb, qemu:x86_pic_interrupt)",
        "the model relies on 1 of them (qemu:exec_tb)",
        "judged anyway (--allow-missing-features)",
    ] {
        assert!(warned[0].contains(part), "{part:?}: {}", warned[0]);
    }
    // The fixture is no build the model was trained on.
    assert!(
        ran.stderr
            .contains("not one the model was trained on (build 1111; build 2222)"),
        "{}",
        ran.stderr
    );
    // As a table, the count follows the verdict.
    let table = monitor(&relying, "--allow-missing-features").succeeds();
    let rows: Vec<&str> = table.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{}", table.stdout);
    assert!(
        rows.iter().all(|r| r.ends_with("  (2 features missing)")),
        "{}",
        table.stdout
    );

    // Never nonzero in training: its absence changes nothing.
    let blind = model_of_absent_probes(dir.path(), false);
    let ran = monitor(&blind, "--json").succeeds();
    assert!(
        ran.stderr
            .contains("the model relies on none of them (they were zero in every training window)"),
        "{}",
        ran.stderr
    );
    assert!(ran.json_lines().iter().all(|v| v["missing_features"] == 2));
    fx.exit();
}

/// A real QEMU and a QEMU-named fixture (a build with other probes): a
/// model trained on the QEMU lists its build; under `--all` the fixture,
/// whose binary lacks a probe the model relies on, is skipped with the
/// sentence and the QEMU is monitored; named by `--vm` it is an error;
/// judged anyway, its other build is warned about.
#[test]
fn monitor_all_skips_a_vm_on_a_qemu_without_the_models_probes() {
    let bin = skip_without_bpf_and_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tag = std::process::id();
    let (real, fake) = (
        format!("vmwatch-mon-{tag}-real"),
        format!("vmwatch-mon-{tag}-fake"),
    );
    let q = common::Qemu::start_idle(&bin, &real, d);
    // exec_tb: the fixture lacks it; the other two it has.
    let list = common::feature_list(
        d,
        "qemu:exec_tb\nqemu:memory_region_ops_write\nqemu:virtqueue_fill\n",
    );
    let data = d.join("real.csv");
    let options = format!("--interval 300ms --windows 12 --probes {}", list.display());
    common::recorder(&[q.pid()], &options, &data).succeeds();
    let model = d.join("model.json");
    run("train")
        .arg(&data)
        .args("--nu 0.1 --gamma 0.1 --features")
        .arg(&list)
        .out(&model)
        .succeeds();
    let build = vmwatch::discover::stapsdt::build_of_file(&bin);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(
        m["training"]["qemu_builds"],
        serde_json::json!([{"build_id": build.build_id, "version": build.version}])
    );

    let bin_dir = tempfile::tempdir().unwrap();
    common::chmod(bin_dir.path(), 0o755);
    let copy = common::install(
        &common::fixture_path(),
        bin_dir.path(),
        "qemu-system-x86_64",
    );
    let fx = Fixture::start_with(
        std::process::Command::new(&copy).args(["-name", &format!("guest={fake}")]),
    );
    let lacks = format!(
        "VM {fake} (PID {}): its QEMU lacks 1 of the features the model relies on (qemu:exec_tb)",
        fx.pid
    );
    let monitor = |targets: &str| {
        run("monitor --json --interval 300ms --windows 3")
            .args(targets)
            .arg("--model")
            .arg(&model)
    };

    let ran = monitor("--all").succeeds();
    assert!(
        ran.stderr
            .contains(&format!("{lacks}; train a model on this QEMU"))
            && ran
                .stderr
                .contains("(skipped: the other VMs are monitored)"),
        "{}",
        ran.stderr
    );
    let lines = ran.json_lines();
    let of = |pid: u32| lines.iter().filter(move |v| v["pid"] == pid);
    assert_eq!(of(q.pid()).count(), 3, "{}", ran.stdout);
    assert!(
        of(q.pid()).all(|v| v.get("missing_features").is_none()),
        "{}",
        ran.stdout
    );
    assert_eq!(
        of(fx.pid).count(),
        0,
        "the fixture was judged: {}",
        ran.stdout
    );

    monitor(&format!("--vm {fake}")).fails_with(&lacks);

    let ran = monitor(&format!("--vm {fake} --allow-missing-features")).succeeds();
    assert!(
        ran.json_lines().iter().all(|v| v["missing_features"] == 1),
        "{}",
        ran.stdout
    );
    let other = vmwatch::discover::stapsdt::build_of_file(&copy);
    assert!(
        ran.stderr.contains(&format!(
            "its QEMU is {other}, not one the model was trained on ({build})"
        )),
        "{}",
        ran.stderr
    );
    fx.exit();
}

/// A model that keeps one of its recording's `seq:` transitions records
/// the probes the recording tracked, and `monitor` tracks them all (here
/// `memory_region_ops_write`, which no model feature names, is attached),
/// so that `virtqueue_fill>tap_send` means what it meant in training.
#[test]
fn monitor_tracks_the_probes_the_models_transitions_were_learned_with() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tracked.csv");
    let (vf, ts, mrw) = ("virtqueue_fill", "tap_send", "memory_region_ops_write");
    let mut columns: Vec<String> = vec![format!("qemu:{vf}")];
    for a in [vf, ts, mrw] {
        for b in [vf, ts, mrw] {
            columns.push(format!("seq:{a}>{b}"));
        }
    }
    let counts = common::around(1000, 37, 101);
    let spec: Vec<(&str, &dyn Fn(usize) -> u64)> = columns
        .iter()
        .map(|c| (c.as_str(), &counts as &dyn Fn(usize) -> u64))
        .collect();
    common::write_dataset(&data, |_| "web".into(), 40, &spec);
    let list = common::feature_list(dir.path(), &format!("qemu:{vf}\nseq:{vf}>{ts}\n"));
    let model = dir.path().join("model.json");
    run("train")
        .arg(&data)
        .args("--nu 0.05 --gamma 0.5 --features")
        .arg(list)
        .out(&model)
        .succeeds();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(
        json["training"]["tracked"],
        serde_json::json!([vf, ts, mrw])
    );
    // The same model without the record: only the probes its features name.
    json["training"].as_object_mut().unwrap().remove("tracked");
    let untracked = dir.path().join("untracked.json");
    std::fs::write(&untracked, serde_json::to_vec(&json).unwrap()).unwrap();

    let fx = Fixture::start();
    let sites = |model: &std::path::Path| -> (usize, String) {
        let ran = run("monitor --interval 200ms --windows 2 --model")
            .arg(model)
            .pid(fx.pid)
            .succeeds();
        let line = ran
            .stderr
            .lines()
            .find(|l| l.contains("probe sites)"))
            .unwrap_or_else(|| panic!("no sites line: {}", ran.stderr))
            .to_string();
        let n = line.split(" features (").nth(1).unwrap();
        let n: usize = n.split(' ').next().unwrap().parse().unwrap();
        (n, ran.stderr)
    };
    let (with, log) = sites(&model);
    assert!(
        log.contains(&format!(
            "tracking the 3 probes the model's seq: transitions were learned with: {vf}, {ts}, {mrw}"
        )),
        "{log}"
    );
    let (without, _) = sites(&untracked);
    assert!(
        with > without,
        "{with} probe sites attached with the tracked set, {without} without"
    );
}
