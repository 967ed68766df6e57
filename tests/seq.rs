//! Sequence features (`seq:<a>><b>`) on the USDT fixture: per-thread
//! transitions between tracked probes counted exactly in the kernel, none
//! across threads, probes that are counted but not tracked leave them
//! alone, a tracked probe without a column of its own is attached all the
//! same, the cost governor never duty-cycles a tracked probe, and the
//! command line refuses what it cannot count. Run as root.

#[macro_use]
mod common;

use common::{Fixture, Recording};

const VF: &str = "virtqueue_fill";
const TS: &str = "tap_send";
const QDP: &str = "qemu_deliver_packet";
const MRW: &str = "memory_region_ops_write";

#[test]
fn transitions_are_counted_per_thread_and_never_across_threads() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    // qemu_deliver_packet is tracked (named by seq: features) without a
    // count of its own; memory_region_ops_write is counted, not tracked.
    let list = common::feature_list(
        dir.path(),
        "qemu:virtqueue_fill\nqemu:tap_send\nqemu:memory_region_ops_write\n\
         seq:virtqueue_fill>tap_send\nseq:tap_send>virtqueue_fill\n\
         seq:tap_send>qemu_deliver_packet\nseq:qemu_deliver_packet>tap_send\n\
         # only across threads, or never\n\
         seq:virtqueue_fill>qemu_deliver_packet\nseq:qemu_deliver_packet>virtqueue_fill\n\
         seq:tap_send>tap_send\nseq:virtqueue_fill>virtqueue_fill\n",
    );
    let mut fx = Fixture::start();
    let options = format!(
        "--probes {} --interval 300ms --windows 10 --budget none",
        list.display()
    );
    let rec = Recording::start(&[fx.pid], &options, "seq.csv");
    // Two threads at once: a,b,a,b,... and b,c,b,c,..., 20,000 rounds each.
    let n = 20_000;
    fx.sequences(n, &[&[VF, TS], &[TS, QDP]]);
    // A third thread: a counted probe that is not tracked between the two
    // does not break their transition.
    let m = 5_000;
    fx.sequences(m, &[&[VF, MRW, TS]]);
    let (ds, _) = rec.finish();
    ds.assert_no_column(
        "qemu:qemu_deliver_packet",
        "a tracked probe without a count of its own got a column",
    );
    let want = [
        ("qemu:virtqueue_fill", n + m),
        ("qemu:tap_send", 2 * n + m),
        ("qemu:memory_region_ops_write", m),
        // Each thread's first hit has no previous probe: n, n - 1.
        ("seq:virtqueue_fill>tap_send", n + m),
        ("seq:tap_send>virtqueue_fill", (n - 1) + (m - 1)),
        ("seq:tap_send>qemu_deliver_packet", n),
        ("seq:qemu_deliver_packet>tap_send", n - 1),
        ("seq:virtqueue_fill>qemu_deliver_packet", 0),
        ("seq:qemu_deliver_packet>virtqueue_fill", 0),
        ("seq:tap_send>tap_send", 0),
        ("seq:virtqueue_fill>virtqueue_fill", 0),
    ];
    ds.assert_totals(fx.pid, &want);
    assert_eq!(
        ds.features().len(),
        want.len(),
        "columns: {:?}",
        ds.features()
    );
}

/// `--track`: every transition among the tracked probes is a column, after
/// every probe's count, and a tracked probe between two others breaks
/// their transition (the tracked set is what a transition means).
#[test]
fn track_counts_every_transition_among_the_tracked_probes() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    let options = format!("--track {VF},{TS},{MRW} --interval 300ms --windows 10 --budget none");
    let rec = Recording::start(&[fx.pid], &options, "track.csv");
    let n = 20_000;
    fx.sequences(n, &[&[VF, MRW, TS]]);
    let (ds, _) = rec.finish();
    let seq: Vec<&String> = ds
        .features()
        .iter()
        .filter(|f| f.starts_with("seq:"))
        .collect();
    assert_eq!(seq.len(), 9, "columns: {:?}", ds.features());
    assert!(
        ds.col(&format!("qemu:{QDP}")).is_some(),
        "every probe is counted too"
    );
    let mut want = vec![
        (format!("seq:{VF}>{MRW}"), n),
        (format!("seq:{MRW}>{TS}"), n),
        (format!("seq:{TS}>{VF}"), n - 1),
        // virtqueue_fill is never directly followed by tap_send: the
        // tracked memory_region_ops_write is between them.
        (format!("seq:{VF}>{TS}"), 0),
    ];
    for p in [VF, TS, MRW] {
        want.push((format!("seq:{p}>{p}"), 0));
    }
    let want: Vec<(&str, u64)> = want.iter().map(|(f, c)| (f.as_str(), *c)).collect();
    ds.assert_totals(fx.pid, &want);
}

/// A feature list's `track:` lines (as `vmwatch select` writes them): its
/// one transition is counted among the whole tracked set, which is
/// recorded with every transition as a column, so the file says what its
/// seq: columns were counted among.
#[test]
fn a_lists_track_lines_keep_what_its_transition_means() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let list = common::feature_list(
        dir.path(),
        &format!("qemu:{VF}\nseq:{VF}>{TS}\ntrack:{VF}\ntrack:{TS}\ntrack:{MRW}\n"),
    );
    let mut fx = Fixture::start();
    let options = format!(
        "--probes {} --interval 300ms --windows 10 --budget none",
        list.display()
    );
    let rec = Recording::start(&[fx.pid], &options, "listed.csv");
    let n = 20_000;
    fx.sequences(n, &[&[VF, MRW, TS]]);
    let (ds, _) = rec.finish();
    let seq = ds
        .features()
        .iter()
        .filter(|f| f.starts_with("seq:"))
        .count();
    assert_eq!(seq, 9, "columns: {:?}", ds.features());
    ds.assert_totals(
        fx.pid,
        &[
            (&format!("qemu:{VF}"), n),
            // Without the track: lines this would be n: memory_region_ops_write
            // is tracked and between them.
            (&format!("seq:{VF}>{TS}"), 0),
            (&format!("seq:{VF}>{MRW}"), n),
        ],
    );
}

#[test]
fn a_probe_tracked_for_seq_features_is_never_duty_cycled() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let list = common::feature_list(
        dir.path(),
        "qemu:virtqueue_fill\nqemu:memory_region_ops_write\nseq:virtqueue_fill>virtqueue_fill\n",
    );
    let mut fx = Fixture::start();
    // The default budget, 1% of a CPU at 700 ns a hit: 14,286 hits/s. Both
    // probes are gated by their semaphores and fire 100,000 times a second
    // for 2.5 s each (7% of a CPU): the governor may thin only the
    // untracked one.
    let options = format!(
        "--probes {} --interval 1s --windows 8 --hit-cost 700",
        list.display()
    );
    let rec = Recording::start(&[fx.pid], &options, "seq-governed.csv");
    let (calls, hits) = fx.pace(VF, 100_000, 2500);
    let (m_calls, m_hits) = fx.pace(MRW, 100_000, 2500);
    let (ds, log) = rec.finish();
    assert_eq!((calls, m_calls), (250_000, 250_000));
    assert_eq!(hits, calls, "the tracked probe was turned off: {log}");
    assert!(
        m_hits < m_calls / 2,
        "the untracked probe was not thinned: {m_hits} of {m_calls} calls hit"
    );
    let c = ds.col("qemu:virtqueue_fill").unwrap();
    let s = ds.col("seq:virtqueue_fill>virtqueue_fill").unwrap();
    let (mut vf, mut seq, mut marked) = (0, 0, 0);
    for r in ds.rows_of(fx.pid) {
        let sampled = ds.sampled(r);
        assert!(
            !sampled.contains("virtqueue_fill"),
            "a tracked probe or its transition was estimated: {sampled}"
        );
        marked += usize::from(sampled.contains("qemu:memory_region_ops_write="));
        vf += r[c].parse::<u64>().unwrap();
        seq += r[s].parse::<u64>().unwrap();
    }
    assert!(marked > 0, "memory_region_ops_write never estimated");
    assert_eq!(vf, calls);
    // One thread: every hit but the first follows one of the same probe.
    assert_eq!(seq, calls - 1);
}

#[test]
fn seq_features_must_be_named_and_well_formed() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let fx = Fixture::start();
    let out = dir.path().join("x.csv");
    let ran = common::run("record --source seq --windows 1")
        .pid(fx.pid)
        .out(&out)
        .fails_with("--source seq counts only the transitions of tracked probes (--track A,B,...)");
    eprintln!("{}", ran.sentence());
    let list = common::feature_list(dir.path(), "qemu:tap_send\nseq:tap_send->virtqueue_fill\n");
    let ran = common::run("record --windows 1 --probes")
        .arg(&list)
        .pid(fx.pid)
        .out(&out)
        .fails_with(
            "line 2: feature `seq:tap_send->virtqueue_fill` is not a transition between two \
             QEMU probes, `seq:<probe>><probe>` (e.g. `seq:virtqueue_fill>virtio_notify`)",
        );
    eprintln!("{}", ran.sentence());
    let list = common::feature_list(dir.path(), "qemu:tap_send\nseq:tap_send>virtqueue_fill\n");
    common::run("record --windows 1 --source qemu --probes")
        .arg(&list)
        .pid(fx.pid)
        .out(&out)
        .fails_with("feature `seq:tap_send>virtqueue_fill` needs --source seq");
    assert!(!out.exists());
}
