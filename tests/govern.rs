//! The cost governor on the USDT fixture: a hot probe is duty-cycled
//! through its semaphore, its counts are estimated and marked, what it
//! costs stays within the budget, and a probe another tracer also holds is
//! counted exactly. Run as root.

#[macro_use]
mod common;

use std::time::Duration;

use common::{now_ms, Dataset, Fixture, Recording};
use vmwatch_core::govern::Trapped;

/// The fixture's sites are 1-byte nops; the tests charge a fixed cost, so
/// what the budget allows does not depend on this machine's calibration.
const HIT_COST_NS: f64 = 700.0;

/// `feature`'s sampling fraction in `row`, if it was estimated.
fn fraction(ds: &Dataset, row: &[String], feature: &str) -> Option<f64> {
    ds.sampled(row).split(';').find_map(|pair| {
        let (f, v) = pair.split_once('=')?;
        (f == feature).then(|| v.parse().unwrap())
    })
}

/// Rows of `pid` whose window lies within [from, to] (unix ms), with margin.
fn rows_within<'a>(
    ds: &'a Dataset,
    pid: u32,
    from: u64,
    to: u64,
) -> impl Iterator<Item = &'a Vec<String>> + 'a {
    ds.rows_of(pid).filter(move |r| {
        let (start, d) = ds.window(r);
        start >= from + 50 && start + d + 50 <= to
    })
}

#[test]
fn a_hot_probe_is_duty_cycled_within_the_budget_and_its_counts_estimated() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    // The default budget (1%) at 700 ns per hit pays for 14,286 hits/s; the
    // fixture fires 100,000/s for 6 s (7% of a CPU counted exactly).
    let options = format!("--interval 1s --windows 9 --hit-cost {HIT_COST_NS}");
    let rec = Recording::start(&[fx.pid], &options, "governed.csv");
    fx.fire("bdrv_aio_flush", 40);
    let from = now_ms();
    let (calls, hits) = fx.pace("virtqueue_fill", 100_000, 6000);
    let to = now_ms();
    fx.fire("bdrv_aio_flush", 40);
    let (ds, log) = rec.finish();
    assert_eq!(calls, 600_000);
    // Over the whole load what was trapped cost about the budget: the phase
    // in which the load began was counted exactly (7% of a CPU for up to
    // 250 ms), and the windows after it pay that back.
    let share = hits as f64 * HIT_COST_NS * 1e-9 / ((to - from) as f64 / 1000.0);
    assert!(
        share <= 0.015,
        "virtqueue_fill's hits cost {:.3}% of a CPU ({hits} of {calls} calls counted)",
        share * 100.0
    );
    assert!(
        hits < calls / 3,
        "only {hits} of {calls} calls were not counted"
    );
    // Every window inside the load is estimated, within 5% of the true rate.
    let mut inside = 0;
    let c = ds.col("qemu:virtqueue_fill").unwrap();
    let mut counted = 0.0;
    for r in ds.rows_of(fx.pid) {
        let n: f64 = r[c].parse().unwrap();
        counted += fraction(&ds, r, "qemu:virtqueue_fill").map_or(n, |f| n * f);
    }
    // The load fires in 1-ms bursts, and a window paying back its first
    // phase counts as little as 3% of the time: single windows stray,
    // the estimates as a whole must not.
    let mut errors = Vec::new();
    let mut sums = (0.0, 0.0);
    for r in rows_within(&ds, fx.pid, from, to) {
        inside += 1;
        let f = fraction(&ds, r, "qemu:virtqueue_fill")
            .unwrap_or_else(|| panic!("window {} is not estimated: {r:?}", r[3]));
        assert!(f > 0.0 && f < 0.5, "window {}: fraction {f}", r[3]);
        let (_, d) = ds.window(r);
        let want = 100_000.0 * d as f64 / 1000.0;
        let got: f64 = r[c].parse().unwrap();
        let e = (got - want).abs() / want;
        sums.0 += got;
        sums.1 += want;
        assert!(
            e <= 0.3,
            "window {}: estimated {got}, {want} calls (fraction {f})",
            r[3]
        );
        errors.push(e);
    }
    assert!(inside >= 3, "only {inside} windows within the load");
    // Measured: 1-12% low (docs/PERFORMANCE.md, "The cost governor").
    let total = (sums.0 - sums.1).abs() / sums.1;
    eprintln!(
        "estimates {} for {} calls: {:.1}% off",
        sums.0,
        sums.1,
        total * 100.0
    );
    assert!(
        total <= 0.15,
        "the windows' estimates add up to {} for {} calls ({errors:?})",
        sums.0,
        sums.1
    );
    // Once the load is known, each window stays within the budget.
    let (mut trapped, mut secs) = (0.0, 0.0);
    for r in rows_within(&ds, fx.pid, from, to).skip(1) {
        let n: f64 = r[c].parse().unwrap();
        trapped += fraction(&ds, r, "qemu:virtqueue_fill").map_or(n, |f| n * f);
        secs += ds.window(r).1 as f64 / 1000.0;
    }
    let steady = trapped * HIT_COST_NS * 1e-9 / secs;
    // The plan keeps 10% free; measured 0.88-1.02%.
    assert!(
        steady <= 0.0115,
        "after the first window of the load, its hits cost {:.3}% of a CPU",
        steady * 100.0
    );
    // The estimates are the counted hits over the fractions: back to them.
    assert!(
        (counted - hits as f64).abs() <= 0.002 * hits as f64 + 10.0,
        "rows say {counted} hits were counted, the fixture {hits}"
    );
    // The cheap probe stays exact.
    assert_eq!(ds.total(fx.pid, "qemu:bdrv_aio_flush"), 80);
    assert!(
        log.contains("windows have estimated counts") && log.contains("budget 1.000%"),
        "{log}"
    );
    // Nothing is left raised.
    let on = fx.enabled();
    assert!(on.values().all(|v| !v), "semaphores left raised: {on:?}");
}

#[test]
fn a_probe_another_tracer_holds_is_counted_exactly() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    let dir = tempfile::tempdir().unwrap();
    let list = common::feature_list(dir.path(), "qemu:virtqueue_fill\n");
    // The other tracer: a vmwatch that counts exactly, so its increment of
    // the semaphore stays while the governed one takes its own back.
    let holder = Recording::start(
        &[fx.pid],
        &format!(
            "--interval 1s --windows 8 --budget none --probes {}",
            list.display()
        ),
        "holder.csv",
    );
    let options = format!("--interval 1s --windows 6 --hit-cost {HIT_COST_NS}");
    let governed = Recording::start(&[fx.pid], &options, "governed.csv");
    std::thread::sleep(Duration::from_millis(300));
    let (calls, hits) = fx.pace("virtqueue_fill", 100_000, 3000);
    assert_eq!((calls, hits), (300_000, 300_000), "the holder keeps it on");
    let (ds, log) = governed.finish();
    let (held, _) = holder.finish();
    assert!(
        log.contains("another tracer holds the semaphore of 1 probe(s) (qemu:virtqueue_fill)"),
        "{log}"
    );
    // Counted exactly: no estimate after the first phase noticed, and every
    // call is in some window of both.
    assert_eq!(ds.total(fx.pid, "qemu:virtqueue_fill"), calls);
    assert_eq!(held.total(fx.pid, "qemu:virtqueue_fill"), calls);
    let on = fx.enabled();
    assert!(on.values().all(|v| !v), "semaphores left raised: {on:?}");
}

#[test]
fn a_hot_probe_without_a_semaphore_is_duty_cycled_on_links_of_its_own() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    // tap_send has no semaphore (two sites): only detaching its uprobes
    // stops it from trapping.
    let options = format!("--interval 1s --windows 9 --hit-cost {HIT_COST_NS}");
    let rec = Recording::start(&[fx.pid], &options, "linked.csv");
    fx.fire("bdrv_aio_flush", 40);
    let from = now_ms();
    let (calls, _) = fx.pace("tap_send", 100_000, 6000);
    let to = now_ms();
    fx.fire("bdrv_aio_flush", 40);
    let (ds, log) = rec.finish();
    assert_eq!(calls, 600_000);
    assert!(
        log.contains("moved 1 hot probe(s) (qemu:tap_send), which no semaphore gates"),
        "{log}"
    );
    let c = ds.col("qemu:tap_send").unwrap();
    let (mut est, mut want, mut inside) = (0.0, 0.0, 0);
    let (mut trapped, mut secs) = (0.0, 0.0);
    for r in rows_within(&ds, fx.pid, from, to).skip(1) {
        inside += 1;
        let f = fraction(&ds, r, "qemu:tap_send")
            .unwrap_or_else(|| panic!("window {} is not estimated: {r:?}", r[3]));
        assert!(f > 0.0 && f < 0.5, "window {}: fraction {f}", r[3]);
        let (_, d) = ds.window(r);
        let got: f64 = r[c].parse().unwrap();
        let w = 100_000.0 * d as f64 / 1000.0;
        assert!(
            (got - w).abs() <= 0.3 * w,
            "window {}: estimated {got}, {w} calls (fraction {f})",
            r[3]
        );
        est += got;
        want += w;
        trapped += got * f;
        secs += d as f64 / 1000.0;
    }
    assert!(inside >= 3, "only {inside} windows within the load");
    let total = (est - want).abs() / want;
    eprintln!(
        "estimates {est} for {want} calls: {:.1}% off",
        total * 100.0
    );
    assert!(total <= 0.15, "estimates {est} for {want} calls");
    let steady = trapped * HIT_COST_NS * 1e-9 / secs;
    eprintln!("counted hits cost {:.3}% of a CPU", steady * 100.0);
    assert!(
        steady <= 0.0115,
        "after the first window of the load, its counted hits cost {:.3}% of a CPU",
        steady * 100.0
    );
    // The cheap probe stays exact, on the binary's link.
    assert_eq!(ds.total(fx.pid, "qemu:bdrv_aio_flush"), 80);
    // Hits on links while switched off (being attached or detached) are
    // paid for, not counted: a small part of what is trapped.
    let Trapped {
        per_s: all,
        dark_per_s: dark,
    } = Trapped::find(&log).unwrap_or_else(|| panic!("no cost summary: {log}"));
    assert!(
        dark <= 0.25 * all,
        "{dark} of {all} hits/s on switched-off links"
    );
}

#[test]
fn moving_a_probe_onto_links_keeps_the_other_processes_of_its_binary_exact() {
    skip_without_bpf!();
    let mut a = Fixture::start();
    let mut b = Fixture::start();
    let options = format!("--interval 1s --windows 8 --hit-cost {HIT_COST_NS}");
    let rec = Recording::start(&[a.pid, b.pid], &options, "two.csv");
    a.fire("bdrv_aio_flush", 40);
    b.fire("bdrv_aio_flush", 40);
    let hot = std::thread::spawn(move || {
        let r = a.pace("tap_send", 100_000, 5000);
        (a, r)
    });
    // By now a's tap_send is on links of each process, b's included.
    std::thread::sleep(Duration::from_millis(2500));
    b.fire("tap_send", 200);
    b.fire("bdrv_aio_flush", 40);
    let (mut a, (calls, _)) = hot.join().unwrap();
    a.fire("bdrv_aio_flush", 40);
    let (ds, log) = rec.finish();
    assert_eq!(calls, 500_000);
    assert!(
        log.contains(
            "moved 1 hot probe(s) (qemu:tap_send), which no semaphore gates, onto links of each \
             of 2 watched process(es)"
        ),
        "{log}"
    );
    // b's tap_send, on b's own link now, is counted exactly; both
    // processes' other probes, on the rebuilt binary link, too.
    assert_eq!(ds.total(b.pid, "qemu:tap_send"), 200);
    assert_eq!(ds.total(a.pid, "qemu:bdrv_aio_flush"), 80);
    assert_eq!(ds.total(b.pid, "qemu:bdrv_aio_flush"), 80);
    // a's is estimated, near its rate.
    let c = ds.col("qemu:tap_send").unwrap();
    let estimated: Vec<&Vec<String>> = ds
        .rows_of(a.pid)
        .filter(|r| fraction(&ds, r, "qemu:tap_send").is_some())
        .collect();
    assert!(
        estimated.len() >= 2,
        "{} windows estimated",
        estimated.len()
    );
    let got: f64 = estimated.iter().map(|r| r[c].parse::<f64>().unwrap()).sum();
    assert!(
        got > 0.5 * calls as f64 && got < 1.3 * calls as f64,
        "estimated {got} of {calls}"
    );
}
