//! `vmwatch agent` on real QEMU processes (TCG, SeaBIOS only, each with a
//! UUID as libvirt gives one): VMs learn and switch to monitoring by
//! themselves, a VM started later learns on its own, a VM that exits and
//! comes back by UUID gets its model again, a restarted agent resumes
//! without re-learning, `ctl relearn` and `ctl forget` work, the metrics
//! endpoint and `ctl status` tell the same story. Run as root.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::agent::{Agent, LEARN};
use common::{eventually, free_loopback_port, http_get, requires_root_and_qemu, run, signal, Qemu};

fn uuid(i: u32) -> String {
    format!("{i:08x}-1111-4222-8333-{:012x}", std::process::id())
}

fn vm(bin: &Path, dir: &Path, name: &str, i: u32) -> Qemu {
    let uuid = uuid(i);
    Qemu::start_idle_with(bin, name, dir, &["-uuid", &uuid])
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

#[test]
fn agent_learns_each_vm_by_itself_and_resumes_after_a_restart() {
    let Some(bin) =
        requires_root_and_qemu("agent_learns_each_vm_by_itself_and_resumes_after_a_restart")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tag = std::process::id();
    let prefix = format!("vmwatch-agent-{tag}-life-");
    let name = |n: &str| format!("{prefix}{n}");
    let (a, b, c) = (name("a"), name("b"), name("c"));
    let qa = vm(&bin, d, &a, 1);
    let qb = vm(&bin, d, &b, 2);
    // Not matched by the include pattern: never watched.
    let _other = Qemu::start_idle(&bin, &format!("other-{tag}"), d);
    let metrics = free_loopback_port();
    let agent = Agent::start(d, &metrics, &prefix);

    // Two VMs learn by themselves and monitor.
    for n in [&a, &b] {
        let v = agent.wait_for(n, "monitoring");
        assert_eq!(v["windows_learned"], LEARN, "{v}");
        assert_eq!(v["uuid"], if *n == a { uuid(1) } else { uuid(2) });
        assert!(v["score"].is_number() && v["anomalous"].is_boolean(), "{v}");
    }
    assert_eq!(
        agent.status().len(),
        2,
        "only matching VMs: {:?}",
        agent.status()
    );

    // A third one, started later, learns on its own.
    let qc = vm(&bin, d, &c, 3);
    assert_eq!(agent.wait_for(&c, "learning")["pid"], qc.pid());
    agent.wait_for(&c, "monitoring");
    assert_eq!(agent.status()[&a]["windows_learned"], LEARN, "A relearned");

    // The metrics endpoint tells the same.
    let text = http_get(&metrics, "/metrics").expect("metrics served");
    for line in [
        format!(r#"vmwatch_vm_state{{state="monitoring",vm="{a}"}} 1"#),
        format!(r#"vmwatch_vm_state{{state="learning",vm="{b}"}} 0"#),
        format!(
            r#"vmwatch_vm_info{{pid="{}",uuid="{}",vm="{a}"}} 1"#,
            qa.pid(),
            uuid(1)
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let learning: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                r#"vmwatch_vm_windows_total{{verdict="learning",vm="{a}"}} "#
            ))
        })
        .expect("windows by verdict")
        .parse()
        .unwrap();
    assert!(learning >= LEARN, "{learning} learning windows");
    assert!(text.contains("vmwatch_drain_seconds_count"), "{text}");
    check_exposition(&text);

    // A VM that exits keeps its state; back with its UUID it monitors at once.
    drop(qa);
    eventually(30, "A's exit noticed", || {
        agent.status()[&a]["pid"].is_null().then_some(())
    });
    assert_eq!(agent.status()[&a]["state"], "monitoring");
    let qa = vm(&bin, d, &a, 1);
    let back = eventually(30, "A back", || {
        agent
            .status()
            .remove(&a)
            .filter(|v| v["pid"] == qa.pid() && v["score"].is_number())
    });
    assert_eq!(back["state"], "monitoring", "{back}");
    assert_eq!(back["windows_learned"], LEARN, "{back}");

    // SIGTERM detaches within 2 s; a new agent resumes without re-learning.
    let took = agent.stop();
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
    let agent = Agent::start(d, &metrics, &prefix);
    let first = agent.status();
    for n in [&a, &b, &c] {
        assert_eq!(
            first[n]["state"], "monitoring",
            "{n} after restart: {:?}",
            first[n]
        );
        assert_eq!(first[n]["windows_learned"], LEARN);
    }

    // relearn: a new learning period on top of the kept windows.
    let said = agent.ctl(&format!("relearn {b}"));
    assert!(said.contains("learning"), "{said}");
    agent.wait_for(&b, "learning");
    let v = agent.wait_for(&b, "monitoring");
    assert_eq!(v["windows_learned"], 2 * LEARN, "{v}");
    // forget: C starts from nothing.
    agent.ctl(&format!("forget {c}"));
    let v = agent.wait_for(&c, "learning");
    assert!(v["windows_learned"].as_u64().unwrap() < LEARN, "{v}");
    run("ctl")
        .arg("--state-dir")
        .arg(&agent.state)
        .args("relearn no-such-vm")
        .fails_with("the agent knows no VM `no-such-vm`");

    // Events: each VM's phases, in order, and a line per window.
    let events = std::fs::read_to_string(d.join("events.jsonl")).unwrap();
    let phases: Vec<(String, String)> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "phase" && e["vm"] == b)
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("learning", "training"),
        ("training", "monitoring"),
        ("monitoring", "learning"),
        ("learning", "training"),
        ("training", "monitoring"),
    ]
    .iter()
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .collect();
    assert_eq!(phases, want, "phase events of B");
    assert!(
        events
            .lines()
            .filter(|l| l.contains(r#""event":"window""#))
            .count()
            > 50
    );

    // After SIGKILL the next agent lowers what the killed one raised.
    let mut killed = agent;
    signal(&killed.child, libc::SIGKILL);
    let _ = killed.child.wait();
    drop(killed);
    let agent = Agent::start(d, &metrics, &prefix);
    assert!(
        log(d).contains("lowered"),
        "no semaphore repair: {}",
        log(d)
    );
    agent.stop();
    drop((qb, qc));
}

/// `promtool check metrics` on the exposition, where promtool is installed
/// (Debian's prometheus package; CI installs it).
fn check_exposition(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing in CI"
        );
        eprintln!("SKIPPED promtool check metrics: promtool is not installed");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus (Debian's package) scrapes the agent: its query API
/// returns the per-VM series.
#[test]
fn a_real_prometheus_scrapes_the_agent() {
    let test = "a_real_prometheus_scrapes_the_agent";
    let Some(bin) = requires_root_and_qemu(test) else {
        return;
    };
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: prometheus is missing in CI"
        );
        eprintln!("SKIPPED {test}: prometheus is not installed (apt-get install prometheus)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = format!("vmwatch-agent-{}-prom", std::process::id());
    let _q = vm(&bin, d, &name, 9);
    let metrics = free_loopback_port();
    let agent = Agent::start(d, &metrics, &name);
    agent.wait_for(&name, "monitoring");

    let web = free_loopback_port();
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vmwatch\n    \
             static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let _prometheus = common::KillOnDrop(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                d.join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let query = "/api/v1/query?query=vmwatch_vm_state%7Bstate%3D%22monitoring%22%7D";
    let body = eventually(60, "prometheus has the agent's series", || {
        http_get(&web, query)
            .ok()
            .filter(|b| b.contains(&format!(r#""vm":"{name}""#)))
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let series = v["data"]["result"].as_array().unwrap();
    let ours = series
        .iter()
        .find(|s| s["metric"]["vm"] == name.as_str())
        .expect("the VM's series");
    assert_eq!(ours["metric"]["job"], "vmwatch");
    assert_eq!(ours["value"][1], "1", "{ours}");
    // The scrape itself is healthy.
    let up = http_get(&web, "/api/v1/query?query=up%7Bjob%3D%22vmwatch%22%7D").unwrap();
    assert!(
        up.contains(r#""value":["#) && up.contains(r#","1"]"#),
        "{up}"
    );
    agent.stop();
}

/// `ctl export` on one host and `ctl import` on another: the VM keeps its
/// profile (what a live migration needs), even when it already runs there.
#[test]
fn a_vm_moved_with_export_and_import_keeps_its_profile() {
    let test = "a_vm_moved_with_export_and_import_keeps_its_profile";
    let Some(bin) = requires_root_and_qemu(test) else {
        return;
    };
    let (here, there) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = format!("vmwatch-agent-{}-move", std::process::id());
    let _q = vm(&bin, here.path(), &name, 7);
    let source = Agent::start(here.path(), "none", &name);
    source.wait_for(&name, "monitoring");
    let bundle = here.path().join("bundle.json");
    std::fs::write(&bundle, source.ctl(&format!("export {name}"))).unwrap();
    source.stop();

    // The "destination": a fresh state directory; the VM is new there.
    let dest = Agent::start(there.path(), "none", &name);
    dest.wait_for(&name, "learning");
    let said = dest.ctl(&format!("import {}", bundle.display()));
    assert!(said.contains("imported (monitoring"), "{said}");
    let v = dest.wait_for(&name, "monitoring");
    assert_eq!(v["windows_learned"], LEARN, "{v}");
    assert_eq!(v["uuid"], uuid(7));
    run("ctl")
        .arg("--state-dir")
        .arg(&dest.state)
        .arg("import")
        .arg(here.path().join("agent.toml"))
        .fails_with("is not the output of `vmwatch ctl export`");
    dest.stop();
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs at {}", at.display());
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// A full state directory: a clear log line and a metric; a VM already
/// monitoring goes on, and a new VM learns once there is room again.
#[test]
fn a_full_state_directory_is_reported_and_monitoring_goes_on() {
    let test = "a_full_state_directory_is_reported_and_monitoring_goes_on";
    let Some(bin) = requires_root_and_qemu(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = format!("vmwatch-agent-{}-full-", std::process::id());
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let _disk = Tmpfs::mount(&d.join("state"), "1m");
    let _qa = vm(&bin, d, &a, 11);
    let metrics = free_loopback_port();
    let agent = Agent::start(d, &metrics, &prefix);
    agent.wait_for(&a, "monitoring");

    // Fill the disk, then a new VM comes.
    let filler = d.join("state").join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    let _qb = vm(&bin, d, &b, 12);
    agent.wait_for(&b, "learning");
    let judged = |text: &str| {
        ["normal", "anomalous"]
            .iter()
            .filter_map(|v| {
                metric(
                    text,
                    &format!(r#"vmwatch_vm_windows_total{{verdict="{v}",vm="{a}"}} "#),
                )
            })
            .sum::<f64>()
    };
    let before = judged(&http_get(&metrics, "/metrics").unwrap());
    // Write errors are counted, and A is judged in windows after them (the
    // errors can all come within one window: wait for both).
    let text = eventually(30, "write errors counted while A is judged", || {
        let t = http_get(&metrics, "/metrics").ok()?;
        (metric(&t, "vmwatch_state_write_errors_total ")? >= 3.0 && judged(&t) > before)
            .then_some(t)
    });
    assert!(judged(&text) > before, "A stopped being judged:\n{text}");
    assert_eq!(agent.status()[&b]["windows_learned"], 0);
    assert!(
        log(d).contains("No space left on device"),
        "no clear log line: {}",
        log(d)
    );

    // Room again: B learns and monitors.
    std::fs::remove_file(&filler).unwrap();
    let v = agent.wait_for(&b, "monitoring");
    assert_eq!(v["windows_learned"], LEARN, "{v}");
    agent.stop();
}

/// A VM whose probe hits cost more than `budget` is logged and flagged
/// (vmwatch_vm_over_budget), and the budget is exported; it is still judged.
#[test]
fn a_vm_over_its_probe_budget_is_logged_and_flagged() {
    let test = "a_vm_over_its_probe_budget_is_logged_and_flagged";
    let Some(bin) = requires_root_and_qemu(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = format!("vmwatch-agent-{}-budget", std::process::id());
    let _q = vm(&bin, d, &name, 13);
    let metrics = free_loopback_port();
    // SeaBIOS's idle loop fires thousands of the test's probes a second; at
    // 1 ms a hit (set, not measured) even the cost governor's smallest duty
    // cycle (1/1024) leaves them far above a millionth of a CPU.
    let agent = Agent::start_with(d, &metrics, &name, "budget = 0.0001\nhit_cost_ns = 1000000");
    agent.wait_for(&name, "monitoring");
    // The flag says the last window; at the smallest duty cycle a 200-ms
    // window can trap nothing (cost 0, within budget), so wait for one
    // that trapped something.
    let over = format!(r#"vmwatch_vm_over_budget{{vm="{name}"}} "#);
    let text = eventually(30, "the VM flagged over its budget", || {
        let text = http_get(&metrics, "/metrics").unwrap();
        (metric(&text, &over) == Some(1.0)).then_some(text)
    });
    assert_eq!(
        metric(&text, "vmwatch_probe_budget_ratio "),
        Some(1e-6),
        "{text}"
    );
    let cost = metric(
        &text,
        &format!(r#"vmwatch_vm_probe_cost_ratio{{vm="{name}"}} "#),
    );
    assert!(cost.is_some_and(|c| c > 1e-6), "{text}");
    assert!(
        log(d).contains(&format!("VM {name}: its probe hits cost"))
            && log(d).contains("above the budget of 0.00010%"),
        "no log line: {}",
        log(d)
    );
    agent.stop();

    // Without a budget there is neither.
    let metrics = free_loopback_port();
    let agent = Agent::start_with(d, &metrics, &name, "budget = \"none\"");
    agent.wait_for(&name, "monitoring");
    let text = http_get(&metrics, "/metrics").unwrap();
    assert!(
        !text.contains("vmwatch_vm_over_budget{") && !text.contains("vmwatch_probe_budget_ratio"),
        "{text}"
    );
    agent.stop();
}

/// The files named `name` anywhere under `dir`.
fn find_files(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(find_files(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
    out
}

/// A VM learned on one QEMU that comes back (same UUID) on a QEMU without
/// probes its model relies on is not judged with a degraded model: the
/// agent says so and learns it anew on that QEMU, keeping the old training
/// set aside. Both QEMUs are found as distributions and libvirt start
/// them: a process renamed with `-name process=`, and a binary called
/// `qemu-kvm` (RHEL's name).
#[test]
fn a_vm_back_on_a_qemu_without_its_models_features_learns_anew() {
    let test = "a_vm_back_on_a_qemu_without_its_models_features_learns_anew";
    let Some(bin) = requires_root_and_qemu(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = format!("vmwatch-agent-{}-moved", std::process::id());
    let id = uuid(15);
    // The fixture (a few QEMU probe names, not SeaBIOS's) as a trusted
    // `qemu-kvm`: it has memory_region_ops_write, none of the others.
    let bin_dir = tempfile::tempdir().unwrap();
    common::chmod(bin_dir.path(), 0o755);
    let kvm = common::install(&common::fixture_path(), bin_dir.path(), "qemu-kvm");
    let features = format!("{}qemu:memory_region_ops_write\n", common::agent::FEATURES);
    let agent = Agent::start_with_features(d, "none", &name, &features, "");

    let q = Qemu::start_idle_with(
        &bin,
        &name,
        d,
        &["-uuid", &id, "-name", "process=renamed-vm"],
    );
    let v = agent.wait_for(&name, "monitoring");
    assert_eq!(v["pid"], q.pid(), "{v}");
    drop(q);
    eventually(30, "the exit noticed", || {
        agent.status()[&name]["pid"].is_null().then_some(())
    });

    let fx = common::Fixture::start_with(Command::new(&kvm).args([
        "-name",
        &format!("guest={name},debug-threads=on"),
        "-uuid",
        &id,
    ]));
    let v = eventually(60, "learning anew on the other QEMU", || {
        agent
            .status()
            .remove(&name)
            .filter(|v| v["pid"] == fx.pid && v["state"] == "learning")
    });
    assert!(v["windows_learned"].as_u64().unwrap() < LEARN, "{v}");
    assert!(v["score"].is_null(), "judged after all: {v}");
    let said = log(d);
    let line = said
        .lines()
        .find(|l| l.contains(&format!("VM {name} (PID {}): its QEMU lacks", fx.pid)))
        .unwrap_or_else(|| panic!("no log line: {said}"));
    for part in [
        "lacks 5 of the model's 6 features",
        "qemu:exec_tb",
        "; the model relies on ",
        "learning it anew on this QEMU",
        "training.csv.old",
    ] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    assert_eq!(find_files(&agent.state, "training.csv.old").len(), 1);
    let events = std::fs::read_to_string(d.join("events.jsonl")).unwrap();
    assert!(
        events.lines().any(|l| l.contains(r#""event":"phase""#)
            && l.contains(r#""from":"monitoring","to":"learning""#)),
        "{events}"
    );
    agent.stop();
}

/// The agent on every probe of a real QEMU, under a budget that forces the
/// cost governor to thin its hot probes: the VM learns and monitors, and
/// what its probes trap, as Prometheus would see it (the hits counter's
/// rate), stays within the budget; nothing is left raised.
#[test]
fn the_agent_learns_every_probe_of_a_real_qemu_within_its_budget() {
    let test = "the_agent_learns_every_probe_of_a_real_qemu_within_its_budget";
    let Some(bin) = requires_root_and_qemu(test) else {
        return;
    };
    const HIT_COST_NS: f64 = 300.0;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = format!("vmwatch-agent-{}-every", std::process::id());
    let q = vm(&bin, d, &name, 14);
    use vmwatch::discover::stapsdt::UsdtBinary;
    let usdt = UsdtBinary::read(&bin).unwrap();
    let mut probes: Vec<&str> = usdt
        .provider_sites("qemu")
        .map(|s| s.name.as_str())
        .collect();
    probes.sort_unstable();
    probes.dedup();
    let list: String = probes.iter().map(|p| format!("qemu:{p}\n")).collect();

    // What every probe of the idle VM traps exactly; the budget is half.
    let exact = d.join("exact.csv");
    run("record --interval 1s --windows 5 --budget none")
        .pid(q.pid())
        .out(&exact)
        .succeeds();
    let ds = common::Dataset::read(&exact);
    let rows: Vec<&Vec<String>> = ds.rows_of(q.pid()).skip(1).collect();
    let hits: f64 = rows.iter().map(|r| ds.hits_of(r)).sum();
    let secs: f64 = rows.iter().map(|r| ds.window(r).1 as f64 / 1000.0).sum();
    let budget = hits / secs * HIT_COST_NS * 1e-9 / 2.0;
    assert!(budget > 0.0, "the idle QEMU fired no probe");

    let metrics = free_loopback_port();
    let agent = Agent::start_with_features(
        d,
        &metrics,
        &name,
        &list,
        // Windows of 1 s, phases of 250 ms: moving a probe onto links
        // takes up to 75 ms on a loaded host, too much of a 50-ms phase
        // (200-ms windows) for the budget to hold there.
        &format!(
            "budget = {:.5}\nhit_cost_ns = {HIT_COST_NS}\ninterval = \"1s\"",
            budget * 100.0
        ),
    );
    agent.wait_for(&name, "monitoring");
    let trapped = || {
        let text = http_get(&metrics, "/metrics").unwrap();
        let n = metric(
            &text,
            &format!(r#"vmwatch_vm_probe_hits_total{{vm="{name}"}} "#),
        )
        .unwrap_or_else(|| panic!("no hits counter: {text}"));
        (std::time::Instant::now(), n)
    };
    let (t0, h0) = trapped();
    std::thread::sleep(Duration::from_secs(8));
    let (t1, h1) = trapped();
    let share = (h1 - h0) / (t1 - t0).as_secs_f64() * HIT_COST_NS * 1e-9;
    eprintln!(
        "{:.4}% of a CPU trapped, budget {:.4}%, exact {:.4}%",
        share * 100.0,
        budget * 100.0,
        budget * 200.0
    );
    assert!(h1 > h0, "nothing trapped");
    assert!(
        share <= 1.15 * budget,
        "{:.4}% of a CPU trapped, budget {:.4}%\n{}",
        share * 100.0,
        budget * 100.0,
        log(d)
    );
    assert!(
        // Found now, or remembered from an earlier run on this build.
        log(d).contains("onto links") || log(d).contains("go on links"),
        "no hot probe moved onto links: {}",
        log(d)
    );
    assert_eq!(agent.status()[&name]["state"], "monitoring");
    agent.stop();
    let id = vmwatch::discover::procs::Process::from_pid(q.pid())
        .unwrap()
        .binary_id;
    let raised = usdt
        .provider_sites("qemu")
        .filter_map(|s| s.semaphore_offset)
        .filter(|off| vmwatch::attach::semaphores::value(q.pid(), id, *off).unwrap() > 0)
        .count();
    assert_eq!(raised, 0, "semaphores left raised");
}

/// A feature list with `track:` lines (as `vmwatch select` writes them) on
/// a real QEMU: the agent tracks the whole set, its training file has every
/// transition among it as a column, and the model it learns keeps the
/// listed features and records the tracked set, so `monitor` would track
/// the same probes.
#[test]
fn the_agent_tracks_a_lists_track_lines_on_a_real_qemu() {
    let test = "the_agent_tracks_a_lists_track_lines_on_a_real_qemu";
    let Some(bin) = requires_root_and_qemu(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = format!("vmwatch-agent-{}-tracked", std::process::id());
    let _q = vm(&bin, d, &name, 16);
    let features = format!(
        "{}seq:x86_pic_interrupt>memory_region_ops_read\n\
         track:x86_pic_interrupt\ntrack:memory_region_ops_read\ntrack:memory_region_ops_write\n",
        common::agent::FEATURES
    );
    let agent = Agent::start_with_features(d, "none", &name, &features, "");
    agent.wait_for(&name, "monitoring");
    let training = find_files(&agent.state, "training.csv");
    assert_eq!(training.len(), 1, "{training:?}");
    let ds = common::Dataset::read(&training[0]);
    let seq: Vec<&String> = ds.header.iter().filter(|c| c.starts_with("seq:")).collect();
    assert_eq!(seq.len(), 9, "every transition of the 3 tracked: {seq:?}");
    let model = find_files(&agent.state, "model.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&model[0]).unwrap()).unwrap();
    let learned: Vec<&str> = m["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        learned.iter().filter(|f| f.starts_with("seq:")).count(),
        1,
        "the model learns the listed transition only: {learned:?}"
    );
    let tracked: std::collections::BTreeSet<&str> = m["training"]["tracked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        tracked,
        [
            "memory_region_ops_read",
            "memory_region_ops_write",
            "x86_pic_interrupt"
        ]
        .into(),
        "{m}"
    );
    agent.stop();
}
