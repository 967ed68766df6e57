//! A real libvirt: Debian's libvirtd, run privately by the test (see
//! `common::libvirt`), starts transient TCG domains whose `<emulator>` is
//! the instrumented QEMU. `vmwatch list` names each QEMU by its libvirt
//! name and UUID and trusts it (libvirt runs QEMU as the system account
//! libvirt-qemu), and `vmwatch record --vm NAME` records it. The fallbacks
//! for a QEMU without `-name` read the real PID file and cgroup libvirt
//! made; the test leaves no process, cgroup or file behind.

#[macro_use]
mod common;

use std::time::Instant;

use common::libvirt::{Domain, Libvirtd};
use common::{list_json, run, Dataset};
use vmwatch::discover::procs;

/// libvirt's qemu user on Debian (`libvirt-qemu`).
const LIBVIRT_QEMU_UID: u32 = 64055;

/// A UUID of this test run, lower-case like QEMU's `-uuid` from libvirt.
fn uuid(n: u16) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:08x}-{n:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        (nanos >> 48) as u16 & 0xfff,
        (nanos >> 36) as u16 & 0xfff,
        nanos as u64 & 0xffff_ffff_ffff
    )
}

/// The `vmwatch list --json` entry of `dom`'s QEMU.
fn listed(dom: &Domain) -> serde_json::Value {
    let list = list_json();
    list.iter()
        .find(|e| e["pid"] == dom.pid)
        .unwrap_or_else(|| panic!("{} (PID {}) not listed: {list:?}", dom.name, dom.pid))
        .clone()
}

#[test]
fn a_libvirt_domain_is_known_by_its_libvirt_name_and_uuid() {
    let qemu = skip_without_bpf_and_qemu!();
    skip_without_libvirt!();
    let t = Instant::now();
    let mut libvirt = Libvirtd::start(&qemu);
    eprintln!(
        "libvirtd (PID {}) answers after {:?}",
        libvirt.pid(),
        t.elapsed()
    );

    let name = format!("vmwatch-libvirt-{}", std::process::id());
    let id = uuid(1);
    let t = Instant::now();
    // libvirt takes either case and passes QEMU the lower-case form.
    let dom = libvirt.create(&name, &id.to_ascii_uppercase());
    eprintln!(
        "domain {name} (ID {}, QEMU PID {}) runs after {:?} (libvirt probes the emulator first)",
        dom.id,
        dom.pid,
        t.elapsed()
    );
    let p = procs::Process::from_pid(dom.pid).unwrap();
    assert_eq!(
        p.uids,
        (LIBVIRT_QEMU_UID, LIBVIRT_QEMU_UID),
        "libvirt's qemu user"
    );

    let e = listed(&dom);
    assert_eq!(e["vm"], name.as_str(), "{e}");
    assert_eq!(e["uuid"], id.as_str(), "{e}");
    assert_eq!(e["trusted"], true, "{e}");
    assert!(e["untrusted_reason"].is_null(), "{e}");
    assert!(e["probes"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(
        e["binary"],
        libvirt.emulator.to_string_lossy().as_ref(),
        "{e}"
    );
    let table = run("list").succeeds().stdout;
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&dom.pid.to_string()))
        .unwrap_or_else(|| panic!("PID {} not in the table: {table}", dom.pid));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1..3], [name.as_str(), id.as_str()], "{table}");

    // What a QEMU without -name would be named by: libvirt's PID file and
    // the machine cgroup libvirt made for it.
    assert_eq!(
        procs::libvirt_name_from_pid_files(&libvirt.pid_dir(), dom.pid).as_deref(),
        Some(name.as_str())
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", dom.pid)).unwrap();
    assert_eq!(
        procs::libvirt_name_from_cgroup(&cgroup).as_deref(),
        Some(name.as_str()),
        "{cgroup}"
    );

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("libvirt.csv");
    let t = Instant::now();
    let ran = run("record --windows 2")
        .arg("--vm")
        .arg(&name)
        .out(&csv)
        .succeeds();
    eprintln!(
        "vmwatch record --vm {name} --windows 2 took {:?}",
        t.elapsed()
    );
    assert!(
        ran.stderr
            .contains(&format!("watching VM {name} (PID {})", dom.pid)),
        "{}",
        ran.stderr
    );
    let ds = Dataset::read(&csv);
    let vm = ds.col("vm").unwrap();
    let rows: Vec<_> = ds.rows_of(dom.pid).collect();
    assert_eq!(rows.len(), 2, "{}", ran.stderr);
    assert!(rows.iter().all(|r| r[vm] == name), "{rows:?}");
    assert!(ds.hits(dom.pid) > 0, "no probe hits: {}", ran.stderr);

    // The agent names the domain by its libvirt name and UUID.
    let agent = common::agent::Agent::start(dir.path(), "none", &name);
    let v = agent.wait_for(&name, "learning");
    assert_eq!(v["uuid"], id.as_str(), "{v}");
    assert_eq!(v["pid"], dom.pid, "{v}");
    assert!(
        agent.state.join("vms").join(format!("uuid-{id}")).is_dir(),
        "state keyed by the domain's UUID"
    );
    agent.stop();

    // A name libvirt abridges for its machine name: the PID file keeps it
    // whole, the cgroup has libvirt's form (letters, digits, '-' and '.',
    // runs of '-' and '.' collapsed, the machine name cut at 64).
    let long = format!("vmwatch_test..abridged-{}", "n".repeat(60));
    let dom2 = libvirt.create(&long, &uuid(2));
    let e = listed(&dom2);
    assert_eq!(e["vm"], long.as_str(), "{e}");
    assert_eq!(e["uuid"], dom2.uuid.as_str(), "{e}");
    assert_eq!(
        procs::libvirt_name_from_pid_files(&libvirt.pid_dir(), dom2.pid).as_deref(),
        Some(long.as_str())
    );
    let machine = format!("qemu-{}-vmwatchtest.abridged-", dom2.id);
    let abridged = format!("vmwatchtest.abridged-{}", "n".repeat(64 - machine.len()));
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", dom2.pid)).unwrap();
    assert_eq!(
        procs::libvirt_name_from_cgroup(&cgroup).as_deref(),
        Some(abridged.as_str()),
        "{cgroup}"
    );

    let t = Instant::now();
    libvirt.destroy(&dom);
    libvirt.destroy(&dom2);
    let daemon = libvirt.pid();
    libvirt.stop();
    eprintln!("destroyed and stopped in {:?}", t.elapsed());
    assert!(!common::libvirt::is_running(daemon), "libvirtd still runs");
    assert!(
        list_json()
            .iter()
            .all(|e| e["pid"] != dom.pid && e["pid"] != dom2.pid),
        "a domain's QEMU is still listed"
    );
}
