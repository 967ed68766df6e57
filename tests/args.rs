//! Argument features (`arg:`) on the USDT fixture: QEMU-shaped
//! `virtqueue_pop`/`virtqueue_fill`/`virtio_blk_handle_write` sites whose
//! arguments the kernel reads from their `.note.stapsdt` specs, counted
//! exactly per log2 bucket and per kind of queue; a probe whose arguments
//! are read without a column of its own (`virtqueue_pop`) is attached all
//! the same and gets no column. Run as root.

#[macro_use]
mod common;

use common::{Fixture, Recording};

#[test]
fn argument_buckets_are_counted_exactly_by_queue_kind() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let list = common::feature_list(
        dir.path(),
        "qemu:virtqueue_fill\n\
         arg:virtqueue_fill:len:rx:64-127\narg:virtqueue_fill:len:rx:1024-2047\n\
         arg:virtqueue_fill:len:tx:0\narg:virtqueue_fill:len:rw:512-1023\n\
         arg:virtqueue_fill:len:tx:64-127\n\
         arg:virtio_blk_handle_write:nsectors:8-15\n\
         arg:virtio_blk_handle_write:sector:1048576-2097151\n\
         arg:virtio_blk_handle_write:nsectors:1\n",
    );
    let mut fx = Fixture::start();
    let options = format!(
        "--probes {} --interval 300ms --windows 8 --budget none",
        list.display()
    );
    let rec = Recording::start(&[fx.pid], &options, "args.csv");
    let fills = |fx: &mut Fixture, kind: &str, len: u32, n: u64| {
        assert_eq!(
            fx.ask(&format!("queue {kind} {len} {n}")),
            format!("ok queue {n}")
        );
    };
    fills(&mut fx, "rx", 100, 3_000);
    fills(&mut fx, "rx", 1500, 2_000);
    fills(&mut fx, "rx", 60, 500); // 32-63: not a column
    fills(&mut fx, "tx", 0, 4_000);
    fills(&mut fx, "rw", 513, 700);
    assert_eq!(fx.ask("blk-write 1500000 8 900"), "ok blk-write 900");
    assert_eq!(fx.ask("blk-write 7 1 40"), "ok blk-write 40");
    let (ds, _) = rec.finish();
    ds.assert_no_column(
        "qemu:virtqueue_pop",
        "a probe read for its arguments only got a column",
    );
    ds.assert_totals(
        fx.pid,
        &[
            ("qemu:virtqueue_fill", 10_200),
            ("arg:virtqueue_fill:len:rx:64-127", 3_000),
            ("arg:virtqueue_fill:len:rx:1024-2047", 2_000),
            ("arg:virtqueue_fill:len:tx:0", 4_000),
            ("arg:virtqueue_fill:len:rw:512-1023", 700),
            ("arg:virtqueue_fill:len:tx:64-127", 0),
            ("arg:virtio_blk_handle_write:nsectors:8-15", 900),
            ("arg:virtio_blk_handle_write:sector:1048576-2097151", 900),
            ("arg:virtio_blk_handle_write:nsectors:1", 40),
        ],
    );
    fx.exit();
}

#[test]
fn malformed_argument_features_are_refused_with_one_sentence() {
    skip_without_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let fx = Fixture::start();
    let out = dir.path().join("x.csv");
    let list = common::feature_list(
        dir.path(),
        "qemu:tap_send\narg:virtqueue_fill:len:up:64-127\n",
    );
    let ran = common::run("record --windows 1 --probes")
        .arg(&list)
        .pid(fx.pid)
        .out(&out)
        .fails_with(
            "line 2: feature `arg:virtqueue_fill:len:up:64-127` is not an argument feature \
             vmwatch counts",
        );
    eprintln!("{}", ran.sentence());
    let list = common::feature_list(dir.path(), "qemu:tap_send\narg:virtqueue_fill:len:rx:0\n");
    common::run("record --windows 1 --source qemu --probes")
        .arg(&list)
        .pid(fx.pid)
        .out(&out)
        .fails_with("feature `arg:virtqueue_fill:len:rx:0` needs --source arg");
    assert!(!out.exists());
}
