//! `vmwatch monitor` live on the fixture: trained on a steady probe rate,
//! it calls a burst anomalous, keeps going when a watched process exits,
//! and prints JSON lines. Run as root.

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
