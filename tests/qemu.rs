//! vmwatch on a real QEMU (built by `cargo xtask qemu` with the dtrace
//! backend), started under TCG with no guest: SeaBIOS alone exercises
//! enough of the machine to fire probes.

#[macro_use]
mod common;

use std::sync::Mutex;

use common::{
    finish, qemu_binary, qemu_flavour, recorder, recording, run, Dataset, Qemu, QemuFlavour,
};

/// Tests that raise semaphores in QEMUs they do not own (`--all`) and tests
/// that check no one else raised them run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs against any QEMU of `cargo xtask qemu` (7.2 and 10.0, lab and stock
/// builds; `cargo xtask test` runs this file against each): what differs between
/// them is the kind of nop at the probe sites, which [`qemu_flavour`] says.
#[test]
fn probes_lists_qemus_trace_events() {
    let Some(qemu) = qemu_binary(test_name!()) else {
        return;
    };
    let flavour = qemu_flavour(&qemu);
    eprintln!("QEMU under test: {} ({flavour:?} build)", qemu.display());
    let probes = run("probes --json").arg(&qemu).succeeds().json();
    let probes = probes.as_array().unwrap();
    let qemu_probes = probes.iter().filter(|p| p["provider"] == "qemu").count();
    assert!(qemu_probes >= 2900, "only {qemu_probes} qemu probes");
    // In QEMU 7.2 and 10.0 alike.
    for name in [
        "virtqueue_fill",
        "virtio_queue_notify",
        "memory_region_ops_write",
        "exec_tb",
    ] {
        assert!(probes.iter().any(|p| p["name"] == name), "{name} missing");
    }
    match flavour {
        // The lab recipe's sys/sdt.h makes every site a 5-byte nop (optimized
        // uprobes).
        QemuFlavour::Lab => {
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
        // Systemtap's own sys/sdt.h: every site the 1-byte `nop` (0x90) that a
        // stock Fedora/RHEL QEMU has.
        QemuFlavour::Stock => {
            let nop5: Vec<_> = probes
                .iter()
                .filter(|p| p["provider"] == "qemu" && p["nop5_sites"] != 0)
                .map(|p| p["name"].as_str().unwrap_or("?"))
                .collect();
            assert!(
                nop5.is_empty(),
                "{} qemu probes of a stock build have 5-byte-nop sites, e.g. {:?}",
                nop5.len(),
                &nop5[..nop5.len().min(5)]
            );
            let usdt = vmwatch::discover::stapsdt::UsdtBinary::read(&qemu).unwrap();
            let data = std::fs::read(&qemu).unwrap();
            let not_nop: Vec<_> = usdt
                .provider_sites("qemu")
                .filter(|s| data.get(s.file_offset as usize) != Some(&0x90))
                .map(|s| format!("{} at {:#x}", s.name, s.address))
                .collect();
            assert!(
                not_nop.is_empty(),
                "{} qemu sites of a stock build are not 1-byte nops, e.g. {:?}",
                not_nop.len(),
                &not_nop[..not_nop.len().min(5)]
            );
        }
    }
}

/// The agent's default features (packaging/features.txt, selected on one
/// QEMU, plus the other builds' names of probes that were renamed between
/// 7.2 and 10.0) are all counted on this QEMU: every probe the list counts,
/// tracks or reads arguments of exists here, but for one name of each
/// renamed pair, of which exactly one exists.
#[test]
fn the_default_features_exist_in_this_qemu() {
    let Some(qemu) = qemu_binary(test_name!()) else {
        return;
    };
    let probes = run("probes --json").arg(&qemu).succeeds().json();
    let names: std::collections::HashSet<String> = probes
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["provider"] == "qemu")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let list = vmwatch_core::features::read_feature_list(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/features.txt"),
    )
    .unwrap();
    let mut needed: Vec<String> = list.tracked();
    for f in &list.features {
        let probe = match f.parse::<vmwatch_core::features::Feature>() {
            Ok(vmwatch_core::features::Feature::Probe(p)) => p,
            Ok(vmwatch_core::features::Feature::Arg(a)) => a.family().probe.to_string(),
            _ => continue,
        };
        if !needed.contains(&probe) {
            needed.push(probe);
        }
    }
    const RENAMED: [[&str; 2]; 2] = [
        ["apic_mem_writel", "apic_register_write"],
        ["thread_pool_complete", "thread_pool_complete_aio"],
    ];
    for pair in RENAMED {
        let listed = pair
            .iter()
            .filter(|p| needed.iter().any(|n| n == *p))
            .count();
        if listed == 2 {
            assert_eq!(
                pair.iter().filter(|p| names.contains(**p)).count(),
                1,
                "{pair:?} in {}",
                qemu.display()
            );
        }
    }
    let absent: Vec<&String> = needed
        .iter()
        .filter(|p| !names.contains(*p))
        .filter(|p| {
            // The other name of a renamed pair, both listed.
            !RENAMED.iter().any(|pair| {
                pair.contains(&p.as_str()) && pair.iter().all(|q| needed.iter().any(|n| n == q))
            })
        })
        .collect();
    assert!(
        absent.is_empty(),
        "{}: the default features need probes it lacks: {absent:?} (needed: {needed:?})",
        qemu.display()
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
    let _serial = common::hold(&SERIAL);
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

    // Two listed probes: only their semaphores rise, only in the watched VM
    // (exact: the governor would lower a hot one's now and then).
    let two = "qemu:virtqueue_fill\nqemu:memory_region_ops_write\n";
    let list = common::feature_list(dir.path(), two);
    let csv = dir.path().join("two.csv");
    let options = format!(
        "--windows 4 --interval 500ms --budget none --probes {}",
        list.display()
    );
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

/// The kernel's name for a process (`comm`, at most 15 characters).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim_end()
        .to_string()
}

/// QEMUs as distributions and libvirt start them are found and named by
/// `-name guest=`: RHEL's binary name (`/usr/libexec/qemu-kvm`), a process
/// renamed with `-name process=` (its `comm` no longer says QEMU, its
/// executable still does), libvirt's `debug-threads=on` and `-uuid`. `list`
/// shows them with their QEMU build; `record --vm` and `--all` count their
/// probes, and their rows carry that build.
#[test]
fn rhel_named_and_renamed_qemus_are_found_and_recorded() {
    let bin = skip_without_bpf_and_qemu!();
    let _serial = common::hold(&SERIAL);
    let tag = std::process::id();
    let (rhel, renamed) = (
        format!("vmwatch-rhel-{tag}"),
        format!("vmwatch-renamed-{tag}"),
    );
    // A root-owned copy named as RHEL names it, with a libvirt-like command line.
    let dir = tempfile::tempdir().unwrap();
    common::chmod(dir.path(), 0o755);
    let kvm_bin = common::install(&bin, dir.path(), "qemu-kvm");
    let uuid = format!("{tag:08x}-2222-4333-8444-555566667777");
    // Its firmware stays where the original finds it (a build's
    // `share/qemu` beside `bin/`; a system QEMU's compiled-in path).
    let share = bin.parent().unwrap().join("../share/qemu");
    let mut more = vec!["-uuid", &uuid];
    let share_arg = share.display().to_string();
    if share.is_dir() {
        more.extend(["-L", &share_arg]);
    }
    let mut a = Qemu::start_named(&kvm_bin, &format!("guest={rhel},debug-threads=on"), &more);
    assert_eq!(a.exited(), None, "the qemu-kvm copy did not start");
    let b = Qemu::start_named(
        &bin,
        &format!("guest={renamed},process=renamed-proc,debug-threads=on"),
        &[],
    );
    // What makes them hard to find: neither comm says qemu-system-*.
    assert_eq!(comm(a.pid()), "qemu-kvm");
    assert_eq!(comm(b.pid()), "renamed-proc");
    let build = vmwatch::discover::stapsdt::build_of_file(&bin);
    let build_id = build
        .build_id
        .clone()
        .expect("the QEMU binary has a build id");
    assert!(
        build_id.len() == 40 && build_id.bytes().all(|c| c.is_ascii_hexdigit()),
        "{build_id}"
    );
    let version = build
        .version
        .clone()
        .expect("the QEMU binary has a version banner");
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "{version}"
    );

    let list = common::list_json();
    for (q, name, path) in [(&a, &rhel, &kvm_bin), (&b, &renamed, &bin)] {
        let e = list
            .iter()
            .find(|e| e["pid"] == q.pid())
            .unwrap_or_else(|| panic!("PID {} ({name}) not listed: {list:?}", q.pid()));
        assert_eq!(e["vm"], name.as_str(), "{e}");
        assert_eq!(e["trusted"], true, "{e}");
        assert_eq!(e["binary"], path.display().to_string(), "{e}");
        assert!(e["probes"].as_u64().unwrap() >= 2900, "{e}");
        assert_eq!(e["qemu_build_id"], build_id.as_str(), "{e}");
        assert_eq!(e["qemu_version"], version.as_str(), "{e}");
    }
    let e = list.iter().find(|e| e["pid"] == a.pid()).unwrap();
    assert_eq!(e["uuid"], uuid.as_str(), "{e}");

    // By name, and with --all; probes SeaBIOS's idle loop fires (not those
    // the other tests check for being left alone).
    let out = tempfile::tempdir().unwrap();
    let probes = common::feature_list(
        out.path(),
        "qemu:memory_region_ops_read\nqemu:x86_pic_interrupt\nqemu:qemu_mutex_lock\n",
    );
    for targets in [format!("--vm {rhel} --vm {renamed}"), "--all".to_string()] {
        let csv = out.path().join("named.csv");
        let _ = std::fs::remove_file(&csv);
        let options = format!(
            "{targets} --windows 2 --interval 500ms --probes {}",
            probes.display()
        );
        let ran = run("record").args(&options).out(&csv).succeeds();
        let ds = Dataset::read(&csv);
        let vc = ds.col("vm").unwrap();
        for (q, name) in [(&a, &rhel), (&b, &renamed)] {
            let rows: Vec<_> = ds.rows_of(q.pid()).collect();
            assert_eq!(rows.len(), 2, "{targets}: rows of {name}: {}", ran.stderr);
            assert!(rows.iter().all(|r| r[vc] == *name), "{targets}: {rows:?}");
            assert!(ds.hits(q.pid()) > 0, "{targets}: no probe hits for {name}");
            assert_eq!(
                ds.qemu_of(q.pid()),
                [(build_id.clone(), version.clone())],
                "{targets}: provenance of {name}"
            );
        }
    }
    drop((a, b));
}

/// QEMU's dtrace and ust backends call most probes whatever their
/// semaphore says (tracetool's `trace_X()` checks it only where QEMU asks,
/// e.g. `memory_region_ops_read`); the governor finds such probes, counts
/// them exactly and says so, so their estimates are never inflated.
#[test]
fn the_governor_moves_probes_their_semaphore_does_not_gate_onto_links_of_their_own() {
    let bin = skip_without_bpf_and_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let q = Qemu::start_idle(
        &bin,
        &format!("vmwatch-gated-{}", std::process::id()),
        dir.path(),
    );
    let list = common::feature_list(dir.path(), "qemu:exec_tb\nqemu:qemu_mutex_lock\n");
    let run_with = |budget: &str, name: &str| {
        let out = dir.path().join(name);
        let ran = common::run("record --interval 1s --windows 8 --hit-cost 300")
            .args(&format!("--budget {budget} --probes {}", list.display()))
            .pid(q.pid())
            .out(&out)
            .succeeds();
        (Dataset::read(&out), ran.stderr)
    };
    let (exact, _) = run_with("none", "exact.csv");
    let rate = |ds: &Dataset, rows: &[&Vec<String>], c: usize| {
        let n: f64 = rows.iter().map(|r| r[c].parse::<f64>().unwrap()).sum();
        let s: f64 = rows.iter().map(|r| ds.window(r).1 as f64 / 1000.0).sum();
        n / s
    };
    let e_rows: Vec<&Vec<String>> = exact.rows_of(q.pid()).skip(2).collect();
    let exact_rate = |f: &str| rate(&exact, &e_rows, exact.col(f).unwrap());
    // Both ignore their semaphores; the idle loop fires the hotter one
    // (qemu_mutex_lock on 10.0, ~2,100 hits/s) a few times as often as the
    // other. Half of what both cost exactly (at 300 ns a hit) thins the
    // hotter to about a quarter of the time. (Much less thins both to
    // on-times of a few ms per phase, which sample the idle loop's timer
    // bursts too coarsely for a 25% check.)
    let (hot, total) = {
        let (a, b) = (
            exact_rate("qemu:exec_tb"),
            exact_rate("qemu:qemu_mutex_lock"),
        );
        (
            if a > b {
                "qemu:exec_tb"
            } else {
                "qemu:qemu_mutex_lock"
            },
            a + b,
        )
    };
    let budget = format!("{:.4}", total * 300e-9 * 100.0 / 2.0);
    // What earlier runs found is remembered per build: start from nothing
    // (it only decides which links count a probe, so others lose nothing).
    let _ = std::fs::remove_dir_all("/run/vmwatch/ungated");
    let (governed, log) = run_with(&budget, "governed.csv");
    assert!(
        log.contains("fired while their semaphore was down"),
        "no probe found ungated: {log}"
    );
    assert!(
        log.contains("which no semaphore gates, onto links") && log.contains(hot),
        "{hot} not moved onto links: {log}"
    );
    let marked = |ds: &Dataset, r: &Vec<String>, f: &str| {
        ds.sampled(r)
            .split(';')
            .any(|s| s.starts_with(&format!("{f}=")))
    };
    // Once on links, the hot one is duty-cycled and estimated; both
    // probes' rates agree with the exact run's.
    let late: Vec<&Vec<String>> = governed.rows_of(q.pid()).skip(2).collect();
    for r in &late {
        assert!(
            marked(&governed, r, hot),
            "{hot} not estimated in window {}: {r:?}",
            r[3]
        );
    }
    for f in ["qemu:exec_tb", "qemu:qemu_mutex_lock"] {
        let (g, e) = (
            rate(&governed, &late, governed.col(f).unwrap()),
            exact_rate(f),
        );
        eprintln!("{f}: {g:.0}/s governed, {e:.0}/s exact");
        assert!(
            (g - e).abs() <= 0.25 * e,
            "{f}: {g:.0}/s governed, {e:.0}/s exact"
        );
    }
    // The next run on this build puts it on links from the start, and thins
    // it from its second phase on.
    let (again, log) = run_with(&budget, "again.csv");
    assert!(
        log.contains("an earlier run found its semaphores do not gate")
            && !log.contains("fired while their semaphore was down"),
        "the next run did not start from what the first found: {log}"
    );
    for r in again.rows_of(q.pid()).skip(1) {
        assert!(
            marked(&again, r, hot),
            "{hot} not estimated in window {}: {r:?}",
            r[3]
        );
    }
}

/// The five features whose governed rate (`rows` of `ds`) is furthest from
/// their exact one (`ex_rows` of `ex`), each with its governed windows'
/// counts and sampling fractions: what a failed estimate check shows.
fn furthest_off(
    ex: &Dataset,
    ex_rows: &[&Vec<String>],
    ds: &Dataset,
    rows: &[&Vec<String>],
) -> String {
    let secs = |d: &Dataset, rs: &[&Vec<String>]| -> f64 {
        rs.iter().map(|r| d.window(r).1 as f64 / 1000.0).sum()
    };
    let (ex_secs, secs_gov) = (secs(ex, ex_rows), secs(ds, rows));
    let mut off: Vec<(f64, String)> = ds
        .features()
        .iter()
        .map(|f| {
            let sum = |d: &Dataset, rs: &[&Vec<String>]| -> f64 {
                d.col(f).map_or(0.0, |c| {
                    rs.iter().map(|r| r[c].parse::<f64>().unwrap()).sum()
                })
            };
            let (g, e) = (sum(ds, rows) / secs_gov, sum(ex, ex_rows) / ex_secs);
            let c = ds.col(f).unwrap();
            let windows: Vec<String> = rows
                .iter()
                .filter(|r| r[c] != "0")
                .map(|r| {
                    let frac = ds
                        .sampled(r)
                        .split(';')
                        .find_map(|s| s.split_once('=').filter(|(n, _)| n == f).map(|(_, v)| v))
                        .unwrap_or("1");
                    format!("{}@{frac}", r[c])
                })
                .collect();
            (
                (g - e).abs(),
                format!(
                    "  {f}: {g:.0}/s governed, {e:.0}/s exact; windows {}",
                    windows.join(" ")
                ),
            )
        })
        .collect();
    off.sort_by(|a, b| b.0.total_cmp(&a.0));
    off.into_iter()
        .take(5)
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}

/// At production scale: every probe of three real QEMUs governed at once,
/// one of them restarted under its name while recording. Once measured
/// (and, as on a host that ran vmwatch before, its build's ungated probes
/// known), each VM's trapped hits stay within its budget, the restarted VM is
/// picked up, the estimates agree with exact counting, and no semaphore
/// is left raised.
#[test]
fn every_probe_of_several_qemus_is_governed_within_each_budget_as_vms_come_and_go() {
    let bin = skip_without_bpf_and_qemu!();
    // It checks at the end that no semaphore is raised.
    let _serial = common::hold(&SERIAL);
    const HIT_COST_NS: f64 = 300.0;
    let dir = tempfile::tempdir().unwrap();
    let tag = std::process::id();
    let names: Vec<String> = (0..3).map(|i| format!("vmwatch-many-{tag}-{i}")).collect();
    let mut vms: Vec<Qemu> = names
        .iter()
        .map(|n| Qemu::start_idle(&bin, n, dir.path()))
        .collect();
    let share = |ds: &Dataset, rows: &[&Vec<String>]| {
        let hits: f64 = rows.iter().map(|r| ds.trapped(r)).sum();
        let secs: f64 = rows.iter().map(|r| ds.window(r).1 as f64 / 1000.0).sum();
        hits * HIT_COST_NS * 1e-9 / secs
    };
    let rate = |ds: &Dataset, rows: &[&Vec<String>]| {
        let hits: f64 = rows.iter().map(|r| ds.hits_of(r)).sum();
        let secs: f64 = rows.iter().map(|r| ds.window(r).1 as f64 / 1000.0).sum();
        hits / secs
    };

    // What every probe of one idle QEMU costs exactly; half of it is the
    // budget, so that every VM's hot probes must be thinned.
    let exact = dir.path().join("exact.csv");
    recorder(
        &[vms[0].pid()],
        "--interval 1s --windows 5 --budget none --hit-cost 300",
        &exact,
    )
    .succeeds();
    let ex = Dataset::read(&exact);
    let ex_rows: Vec<&Vec<String>> = ex.rows_of(vms[0].pid()).skip(1).collect();
    let budget = share(&ex, &ex_rows) / 2.0;
    let exact_rate = rate(&ex, &ex_rows);
    assert!(budget > 0.0, "the idle QEMU fired no probe");
    // Which probes their semaphores do not gate is found the first time one
    // fires while down, and remembered per build: the window that finds them
    // counts them exactly. A short governed run first, as a host that has
    // run vmwatch before knows them (tests/qemu.rs's links test covers
    // finding them).
    recorder(
        &[vms[0].pid()],
        &format!(
            "--interval 1s --windows 4 --hit-cost 300 --budget {:.5}",
            budget * 100.0
        ),
        &dir.path().join("warm-up.csv"),
    )
    .succeeds();

    let out = dir.path().join("governed.csv");
    let mut cmd = run("record --interval 1s --windows 20 --hit-cost 300")
        .args(&format!("--budget {:.5}", budget * 100.0));
    for n in &names {
        cmd = cmd.args(&format!("--vm {n}"));
    }
    let mut child = cmd.out(&out).spawn();
    common::wait_for_file(&out, std::time::Duration::from_secs(60), &mut child);
    std::thread::sleep(std::time::Duration::from_secs(5));
    // One VM goes; it comes back under its name (a new process, which
    // boots while watched).
    let gone = vms.remove(1);
    let gone_pid = gone.pid();
    drop(gone);
    let back = Qemu::start_idle(&bin, &names[1], dir.path());
    let settled_ms = common::now_ms();
    vms.insert(1, back);
    let log = finish(child);
    let ds = Dataset::read(&out);

    assert!(
        ds.rows_of(gone_pid).count() >= 3,
        "the VM that went was not recorded before it went"
    );
    let back_rows: Vec<&Vec<String>> = ds
        .rows_of(vms[1].pid())
        .filter(|r| ds.window(r).0 >= settled_ms + 2000)
        .collect();
    assert!(
        back_rows.len() >= 3,
        "the VM that came back was not picked up: {} rows of PID {} after it settled\n{log}",
        back_rows.len(),
        vms[1].pid()
    );
    // Within budget once measured: each window (a 50% margin for a timer
    // burst inside one), and on average (15%). The hits of links being
    // switched are paid for but not in the rows; the summary counts them.
    let mut checked = vec![(gone_pid, ds.rows_of(gone_pid).skip(2).collect::<Vec<_>>())];
    for (i, q) in vms.iter().enumerate() {
        let rows: Vec<&Vec<String>> = if i == 1 {
            back_rows.clone()
        } else {
            ds.rows_of(q.pid()).skip(2).collect()
        };
        checked.push((q.pid(), rows));
    }
    for (pid, rows) in &checked {
        for r in rows {
            let s = share(&ds, &[r]);
            assert!(
                s <= 1.5 * budget,
                "PID {pid} window {}: {:.4}% of a CPU, budget {:.4}%",
                r[3],
                s * 100.0,
                budget * 100.0
            );
        }
        let s = share(&ds, rows);
        eprintln!(
            "PID {pid}: {:.4}% of a CPU over {} windows, budget {:.4}%",
            s * 100.0,
            rows.len(),
            budget * 100.0
        );
        assert!(
            s <= 1.15 * budget,
            "PID {pid}: {:.4}% on average, budget {:.4}%",
            s * 100.0,
            budget * 100.0
        );
        assert!(
            rows.iter().any(|r| !ds.sampled(r).is_empty()),
            "PID {pid}: nothing estimated"
        );
    }
    // The estimates: the first VM's rate of all its probes' hits agrees
    // with the exact run's.
    let got = rate(&ds, &checked[1].1);
    let off = furthest_off(&ex, &ex_rows, &ds, &checked[1].1);
    eprintln!(
        "all probes: {got:.0} hits/s governed, {exact_rate:.0}/s exact; furthest off:\n{off}"
    );
    assert!(
        (got - exact_rate).abs() <= 0.3 * exact_rate,
        "all probes: {got:.0} hits/s governed, {exact_rate:.0}/s exact; the probes furthest \
         off:\n{off}"
    );
    for q in &vms {
        assert!(
            log.contains(&format!("(PID {}): its probe hits cost", q.pid())),
            "no cost summary for PID {}: {log}",
            q.pid()
        );
    }
    // Nothing left raised in the QEMUs still running.
    use vmwatch::discover::stapsdt::UsdtBinary;
    let usdt = UsdtBinary::read(&bin).unwrap();
    for q in &vms {
        let id = vmwatch::discover::procs::Process::from_pid(q.pid())
            .unwrap()
            .binary_id;
        let raised: Vec<&str> = usdt
            .provider_sites("qemu")
            .filter_map(|s| Some((s, s.semaphore_offset?)))
            .filter(|(_, off)| vmwatch::attach::semaphores::value(q.pid(), id, *off).unwrap() > 0)
            .map(|(s, _)| s.name.as_str())
            .collect();
        assert!(
            raised.is_empty(),
            "PID {}: left raised: {raised:?}",
            q.pid()
        );
    }
}

/// `--source perf` on real QEMUs: with libvirt's `debug-threads=on` the
/// vCPU thread (`CPU 0/TCG`) is found and running SeaBIOS shows as vCPU
/// time; without it, all CPU time is the other threads', and the log says
/// why for that QEMU only.
#[test]
fn perf_task_clock_splits_vcpu_time_where_qemu_names_its_threads() {
    let bin = skip_without_bpf_and_qemu!();
    let named = Qemu::start(&bin, "vmwatch-perf-named");
    let plain = Qemu::start_named(&bin, "guest=vmwatch-perf-plain", &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("perf.csv");
    let options = "--source perf --interval 500ms --windows 4";
    let log = recorder(&[named.pid(), plain.pid()], options, &out)
        .succeeds()
        .stderr;
    let ds = Dataset::read(&out);
    let ms = |pid: u32, f: &str| ds.total(pid, f) / 1_000_000;
    let (vcpu, other) = ("perf:task_clock_vcpu_ns", "perf:task_clock_other_ns");
    assert!(
        ms(named.pid(), vcpu) >= 5,
        "vCPU {} ms, other {} ms",
        ms(named.pid(), vcpu),
        ms(named.pid(), other)
    );
    assert!(ds.total(named.pid(), other) > 0);
    assert_eq!(ds.total(plain.pid(), vcpu), 0);
    assert!(ms(plain.pid(), other) >= 5, "{} ms", ms(plain.pid(), other));
    for q in [&named, &plain] {
        assert!(ds.total(q.pid(), "perf:context_switches") > 0);
    }
    let why = "no thread is named like a QEMU vCPU thread";
    assert!(
        log.contains(&format!("PID {}: {why}", plain.pid())),
        "{log}"
    );
    assert!(
        !log.contains(&format!("PID {}: {why}", named.pid())),
        "{log}"
    );
}

/// `seq:` features on a real QEMU's idle loop, under the default budget:
/// every `qemu_mutex_lock` is followed on its thread by `qemu_mutex_locked`
/// (the lock taken), so that transition counts about as often as the
/// rarer of the two and never more; `qemu_mutex_unlock` is tracked without
/// a count of its own; tracked probes are never estimated.
#[test]
fn seq_transitions_of_a_real_qemus_mutexes() {
    let bin = skip_without_bpf_and_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let q = Qemu::start_idle(
        &bin,
        &format!("vmwatch-seq-{}", std::process::id()),
        dir.path(),
    );
    let list = common::feature_list(
        dir.path(),
        "qemu:qemu_mutex_lock\nqemu:qemu_mutex_locked\n\
         seq:qemu_mutex_lock>qemu_mutex_locked\nseq:qemu_mutex_locked>qemu_mutex_unlock\n\
         seq:qemu_mutex_lock>qemu_mutex_unlock\n",
    );
    let out = dir.path().join("seq.csv");
    let options = format!(
        "--probes {} --interval 1s --windows 4 --hit-cost 300",
        list.display()
    );
    recorder(&[q.pid()], &options, &out).succeeds();
    let ds = Dataset::read(&out);
    assert!(
        !ds.features().iter().any(|f| f == "qemu:qemu_mutex_unlock"),
        "{:?}",
        ds.features()
    );
    let t = ds.totals(q.pid());
    eprintln!("{t:?}");
    let (lock, locked) = (t["qemu:qemu_mutex_lock"], t["qemu:qemu_mutex_locked"]);
    let lock_locked = t["seq:qemu_mutex_lock>qemu_mutex_locked"];
    assert!(lock > 1000, "qemu_mutex_lock fired only {lock} times");
    assert!(
        lock_locked <= lock.min(locked),
        "lock>locked {lock_locked}, lock {lock}, locked {locked}"
    );
    // A lock in flight at a window boundary is the only one missing.
    assert!(
        lock_locked * 100 >= lock * 99,
        "lock>locked {lock_locked} of {lock} locks"
    );
    assert!(t["seq:qemu_mutex_locked>qemu_mutex_unlock"] > 0, "{t:?}");
    // Taking a lock and dropping it without `locked` between: never.
    assert_eq!(t["seq:qemu_mutex_lock>qemu_mutex_unlock"], 0, "{t:?}");
}
