//! Argument features (`arg:`): how the values of chosen arguments of chosen
//! QEMU probes are distributed per window, in log2 buckets, split by the
//! kind of virtqueue an element belongs to where the probe is about
//! virtqueue elements. Which probes and arguments, and why each one is
//! informative, is this module's table ([`FAMILIES`]); the positions are
//! QEMU's trace-events signatures (the same in 7.2 and 10.0).
//!
//! Names: `arg:<probe>:<argument>[:<queue>]:<bucket>`, e.g.
//! `arg:virtqueue_fill:len:rx:64-127` (a received frame of 64 to 127 bytes,
//! virtio-net header included) or `arg:virtio_blk_handle_write:nsectors:8-15`.

use std::fmt;

/// Buckets per argument: `0`, `1`, `2-3`, ..., `536870912-1073741823`, and
/// the last one, `1073741824+`, for everything from 2^30 up.
pub const BUCKETS: u8 = 32;

/// A family of argument features: one argument of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub probe: &'static str,
    /// The argument's name in QEMU's trace-events.
    pub arg: &'static str,
    /// Its position among the probe's USDT arguments (from 0).
    pub position: u8,
    /// Position of the `VirtQueue *` argument the counts are split by (the
    /// queue's kind, [`Queue`]); `None`: not split.
    pub queue: Option<u8>,
    /// Why it is informative (docs/FEATURES.md repeats it).
    pub why: &'static str,
}

/// Every family, in column order. Family ids are positions in this table.
pub const FAMILIES: [Family; 5] = [
    Family {
        probe: "virtqueue_fill",
        arg: "len",
        position: 2,
        queue: Some(0),
        why: "bytes the device wrote into a guest buffer: on a receive queue each frame's size \
              (with the 12-byte virtio-net header), so SYN floods, scans, slow partial requests \
              and bulk transfers each have their own mix; 0 on a transmit queue; on a request \
              queue (virtio-blk) the bytes read plus the status byte",
    },
    Family {
        probe: "virtio_blk_handle_read",
        arg: "nsectors",
        position: 3,
        queue: None,
        why: "size of each disk read request: sequential streaming against small random reads",
    },
    Family {
        probe: "virtio_blk_handle_write",
        arg: "nsectors",
        position: 3,
        queue: None,
        why: "size of each disk write request: logs and journals against bulk writes",
    },
    Family {
        probe: "virtio_blk_handle_read",
        arg: "sector",
        position: 2,
        queue: None,
        why: "where on the disk a read starts (log2 of the sector): reading areas a workload \
              does not normally touch",
    },
    Family {
        probe: "virtio_blk_handle_write",
        arg: "sector",
        position: 2,
        queue: None,
        why: "where on the disk a write starts: writing areas a workload does not normally touch",
    },
];

/// The probe that tells a virtqueue's kind: `virtqueue_pop(vq, elem,
/// in_num, out_num)`, the element's device-writable and driver-written
/// descriptor counts; positions of vq, in_num, out_num.
pub const POP: (&str, [u8; 3]) = ("virtqueue_pop", [0, 2, 3]);

/// The kind of a virtqueue, from the elements popped from it: only
/// device-writable buffers (a receive queue, `rx`), only driver-written
/// ones (a transmit queue, `tx`), or both (a request queue such as
/// virtio-blk's or a control queue, `rw`). Its value is the kernel's split
/// index (0: not split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Queue {
    Rx = 1,
    Tx = 2,
    Rw = 3,
}

impl Queue {
    pub const ALL: [Queue; 3] = [Queue::Rx, Queue::Tx, Queue::Rw];

    pub fn name(self) -> &'static str {
        match self {
            Queue::Rx => "rx",
            Queue::Tx => "tx",
            Queue::Rw => "rw",
        }
    }
}

/// Splits of a family in the kernel's column table: none, rx, tx, rw.
pub const SPLITS: u8 = 4;

/// One column: a bucket of one family's values (of one kind of queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArgFeature {
    /// Index into [`FAMILIES`].
    pub family: u8,
    pub queue: Option<Queue>,
    pub bucket: u8,
}

impl ArgFeature {
    pub fn family(&self) -> &'static Family {
        &FAMILIES[usize::from(self.family)]
    }

    /// Its entry in the kernel's column table (`arg_columns`): family,
    /// split, bucket, row-major.
    pub fn table_key(&self) -> u32 {
        (u32::from(self.family) * u32::from(SPLITS) + self.queue.map_or(0, |q| q as u32))
            * u32::from(BUCKETS)
            + u32::from(self.bucket)
    }

    /// Parses what follows `arg:`.
    pub fn parse(rest: &str) -> Option<Self> {
        let mut parts = rest.split(':');
        let (probe, arg) = (parts.next()?, parts.next()?);
        let rest: Vec<&str> = parts.collect();
        let (family, f) = FAMILIES
            .iter()
            .enumerate()
            .find(|(_, f)| f.probe == probe && f.arg == arg)?;
        let (queue, bucket) = match (f.queue, rest.as_slice()) {
            (Some(_), [q, b]) => (Some(*Queue::ALL.iter().find(|x| x.name() == *q)?), *b),
            (None, [b]) => (None, *b),
            _ => return None,
        };
        let bucket = (0..BUCKETS).find(|&k| bucket_name(k) == bucket)?;
        Some(Self {
            family: family as u8,
            queue,
            bucket,
        })
    }
}

impl fmt::Display for ArgFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fam = self.family();
        write!(f, "{}:{}:", fam.probe, fam.arg)?;
        if let Some(q) = self.queue {
            write!(f, "{}:", q.name())?;
        }
        f.write_str(&bucket_name(self.bucket))
    }
}

/// The bucket a value falls in: 0 for 0, else 1 + floor(log2 v), at most
/// [`BUCKETS`] - 1 (bpf/vmwatch.bpf.c's `bucket_of` computes the same).
pub fn bucket_of(v: u64) -> u8 {
    let k = 64 - v.leading_zeros() as u8;
    k.min(BUCKETS - 1)
}

/// A bucket's name: the range of values it holds.
pub fn bucket_name(k: u8) -> String {
    match k {
        0 => "0".into(),
        1 => "1".into(),
        k if k == BUCKETS - 1 => format!("{}+", 1u64 << (k - 1)),
        k => format!("{}-{}", 1u64 << (k - 1), (1u64 << k) - 1),
    }
}

/// Every argument feature, in column order (family, queue, bucket).
pub fn all() -> impl Iterator<Item = ArgFeature> {
    FAMILIES.iter().enumerate().flat_map(|(i, f)| {
        let queues: Vec<Option<Queue>> = match f.queue {
            Some(_) => Queue::ALL.iter().copied().map(Some).collect(),
            None => vec![None],
        };
        queues.into_iter().flat_map(move |queue| {
            (0..BUCKETS).map(move |bucket| ArgFeature {
                family: i as u8,
                queue,
                bucket,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_the_ranges_their_names_say() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(2), 2);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(64), 7);
        assert_eq!(bucket_of(127), 7);
        assert_eq!(bucket_of(1 << 30), 31);
        assert_eq!(bucket_of(u64::MAX), 31);
        assert_eq!(bucket_name(0), "0");
        assert_eq!(bucket_name(2), "2-3");
        assert_eq!(bucket_name(7), "64-127");
        assert_eq!(bucket_name(30), "536870912-1073741823");
        assert_eq!(bucket_name(31), "1073741824+");
        for k in 2..BUCKETS - 1 {
            let (lo, hi) = bucket_name(k)
                .split_once('-')
                .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
                .unwrap();
            assert_eq!((bucket_of(lo), bucket_of(hi)), (k, k));
            assert_eq!(bucket_of(hi + 1), k + 1);
        }
    }

    #[test]
    fn names_round_trip_and_table_keys_are_distinct() {
        let all: Vec<ArgFeature> = all().collect();
        assert_eq!(all.len(), (3 + 4) * BUCKETS as usize);
        let mut keys = std::collections::HashSet::new();
        for f in &all {
            let name = f.to_string();
            assert_eq!(ArgFeature::parse(&name), Some(*f), "{name}");
            assert!(keys.insert(f.table_key()));
            assert!(f.table_key() < FAMILIES.len() as u32 * u32::from(SPLITS * BUCKETS));
        }
        let f = ArgFeature::parse("virtqueue_fill:len:rx:64-127").unwrap();
        assert_eq!((f.family, f.queue, f.bucket), (0, Some(Queue::Rx), 7));
        for bad in [
            "virtqueue_fill:len:64-127",
            "virtqueue_fill:len:up:64-127",
            "virtqueue_fill:len:rx:64-128",
            "virtio_blk_handle_read:nsectors:rx:1",
            "virtio_blk_handle_read:sectors:1",
            "nosuch:len:1",
            "virtqueue_fill",
        ] {
            assert_eq!(ArgFeature::parse(bad), None, "{bad}");
        }
    }
}
