//! vmwatch on a real QEMU (built by `cargo xtask qemu` with the dtrace
//! backend), started under TCG with no guest: SeaBIOS alone exercises
//! enough of the machine to fire probes.

#[macro_use]
mod common;

use common::{finish, qemu_binary, recorder, recording, run, Dataset, Qemu};

#[test]
fn probes_lists_qemus_trace_events() {
    let Some(qemu) = qemu_binary(test_name!()) else {
        return;
    };
    let probes = run("probes --json").arg(&qemu).succeeds().json();
    let probes = probes.as_array().unwrap();
    let qemu_probes = probes.iter().filter(|p| p["provider"] == "qemu").count();
    assert!(qemu_probes >= 2900, "only {qemu_probes} qemu probes");
    for name in [
        "virtqueue_fill",
        "virtio_queue_notify",
        "memory_region_ops_write",
    ] {
        assert!(probes.iter().any(|p| p["name"] == name), "{name} missing");
    }
    // The recipe's sys/sdt.h makes every site a 5-byte nop (optimized uprobes).
    let one_byte: Vec<_> = probes
        .iter()
        .filter(|p| p["provider"] == "qemu" && p["nop5_sites"] != p["sites"])
        .map(|p| p["name"].as_str().unwrap_or("?"))
        .collect();
    assert!(
        one_byte.is_empty(),
        "{} qemu probes have sites that are not 5-byte nops, e.g. {:?}",
        one_byte.len(),
        &one_byte[..one_byte.len().min(5)]
    );
}

#[test]
fn list_and_record_real_qemu_per_pid() {
    let bin = skip_without_bpf_and_qemu!();
    let a = Qemu::start(&bin, "vmwatch-test-a");
    let b = Qemu::start(&bin, "vmwatch-test-b");

    let list = common::list_json();
    let entry = list
        .iter()
        .find(|e| e["pid"] == a.pid())
        .expect("QEMU listed");
    assert_eq!(entry["vm"], "vmwatch-test-a");
    assert!(entry["probes"].as_u64().unwrap() >= 2900, "{entry}");

    let dir = tempfile::tempdir().unwrap();
    let out_csv = dir.path().join("qemu.csv");
    let options = "--vm vmwatch-test-a --interval 1s --windows 3 --label bios";
    let stderr = recorder(&[b.pid()], options, &out_csv).succeeds().stderr;
    assert_eq!(
        stderr.matches(" sites of ").count(),
        1,
        "one attachment: {stderr}"
    );

    let ds = Dataset::read(&out_csv);
    assert!(ds.header.len() > 2900, "{} columns", ds.header.len());
    for q in [&a, &b] {
        assert_eq!(ds.rows_of(q.pid()).count(), 3, "rows of PID {}", q.pid());
        let hits = ds.hits(q.pid());
        assert!(hits > 0, "no probe hits counted for PID {}", q.pid());
    }
    let vc = ds.col("vm").unwrap();
    assert!(ds.rows_of(a.pid()).all(|r| r[vc] == "vmwatch-test-a"));
}

/// Every probe site attaches (counting needs no argument parsing, so sites
/// whose argument specs libbpf rejects are included), and only the
/// semaphores of attached probes are raised, in the watched QEMU only.
#[test]
fn every_site_attaches_and_only_listed_semaphores_rise() {
    let bin = skip_without_bpf_and_qemu!();
    use vmwatch::discover::stapsdt::UsdtBinary;
    let usdt = UsdtBinary::read(&bin).unwrap();
    let qemu_sites = usdt.provider_sites("qemu").count();
    let watched = Qemu::start(&bin, "vmwatch-test-sema");
    let other = Qemu::start(&bin, "vmwatch-test-other");
    let proc_w = vmwatch::discover::procs::Process::from_pid(watched.pid()).unwrap();
    let sema = |pid: u32, name: &str| -> u16 {
        let off = usdt
            .provider_sites("qemu")
            .find(|s| s.name == name)
            .and_then(|s| s.semaphore_offset)
            .unwrap_or_else(|| panic!("{name} has no semaphore"));
        vmwatch::attach::semaphores::value(pid, proc_w.binary_id, off).unwrap()
    };

    // All probes: the log reports every site attached.
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.csv");
    let options = "--windows 1 --interval 500ms";
    let stderr = recorder(&[watched.pid()], options, &all).succeeds().stderr;
    assert!(
        stderr.contains(&format!("attached {qemu_sites} sites")),
        "expected all {qemu_sites} sites attached: {stderr}"
    );

    // Two listed probes: only their semaphores rise, only in the watched VM.
    let two = "qemu:virtqueue_fill\nqemu:memory_region_ops_write\n";
    let list = common::feature_list(dir.path(), two);
    let csv = dir.path().join("two.csv");
    let options = format!("--windows 4 --interval 500ms --probes {}", list.display());
    let rec = recording(&[watched.pid()], &options, &csv);
    assert!(sema(watched.pid(), "virtqueue_fill") >= 1);
    assert!(sema(watched.pid(), "memory_region_ops_write") >= 1);
    assert_eq!(sema(watched.pid(), "exec_tb"), 0, "unlisted probe enabled");
    assert_eq!(
        sema(other.pid(), "virtqueue_fill"),
        0,
        "unwatched VM enabled"
    );
    finish(rec);
    assert_eq!(sema(watched.pid(), "virtqueue_fill"), 0, "not restored");
    assert_eq!(
        sema(watched.pid(), "memory_region_ops_write"),
        0,
        "not restored"
    );
}
