//! `--source kvm`: KVM tracepoints (discovered on the running kernel) are
//! counted under the QEMU process whose threads hit them, and only there.
//! Needs /dev/kvm (skipped with a printed reason where it is absent) and the
//! instrumented QEMU of `cargo xtask qemu`.

#[macro_use]
mod common;

use common::{requires_root_and_qemu, Dataset, Qemu};

#[test]
fn kvm_events_are_counted_under_their_own_qemu_only() {
    let test = test_name!();
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED {test}: /dev/kvm is absent on this machine");
        return;
    }
    let Some(bin) = requires_root_and_qemu(test) else {
        return;
    };
    let mut kvm = Qemu::start_accel(&bin, "vmwatch-test-kvm", "kvm");
    let tcg = Qemu::start_accel(&bin, "vmwatch-test-tcg", "tcg");
    if let Some(status) = kvm.exited() {
        eprintln!("SKIPPED {test}: QEMU -accel kvm exited at once ({status}): KVM unusable here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kvm.csv");
    let pids = [kvm.pid(), tcg.pid()];
    common::finish(common::record(
        &pids,
        "--source kvm --interval 1s --windows 3",
        &out,
    ));

    let ds = Dataset::read(&out);
    for f in [
        "kvm:kvm_exit",
        "kvm:kvm_pio",
        "kvm:kvm_userspace_exit",
        "kvm:exit:other",
    ] {
        assert!(ds.col(f).is_some(), "{f} is not a column");
    }
    assert!(ds.features().iter().all(|h| h.starts_with("kvm:")));
    assert!(
        ds.hits(kvm.pid()) > 0,
        "no kvm: events under the KVM guest's PID"
    );
    assert_eq!(ds.hits(tcg.pid()), 0, "kvm: events under a TCG guest's PID");
    assert_eq!(ds.rows_of(tcg.pid()).count(), 3);
}
