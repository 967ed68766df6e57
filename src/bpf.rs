//! The kernel/user contract: the generated skeleton of `bpf/vmwatch.bpf.c`
//! (built by `build.rs` into `OUT_DIR`) and the one [`Layout`] of its
//! counters, which [`crate::attach`] writes into the programs' rodata and
//! [`crate::drain`] reads by.

use std::mem::{size_of, MaybeUninit};

use libbpf_rs::OpenObject;

use crate::error::{Error, Result};

#[allow(clippy::all, clippy::pedantic, dead_code, unused_imports, missing_docs)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/vmwatch.skel.rs"));
}

pub use skel::*;

/// Counters per `counts` map value: the length of `struct chunk` in
/// bpf/vmwatch.bpf.c, its only definition.
pub const CHUNK: usize = size_of::<types::chunk>() / size_of::<u64>();

/// Default number of processes one collector can watch at once.
pub const DEFAULT_MAX_VMS: u32 = 64;

/// Most processes one collector can watch: the per-CPU counter map is
/// allocated up front (16 KiB per CPU, slot and 2,048 features).
pub const MAX_VMS: u32 = 1024;

/// Where the counter of (slot, feature) lives in the `counts` map: row
/// `slot` takes `chunks` consecutive values of [`CHUNK`] counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Row width: features of every source together.
    pub features: u32,
    /// Map values per row.
    pub chunks: u32,
    /// Rows: processes watched at once.
    pub slots: u32,
}

impl Layout {
    pub fn new(features: usize, slots: u32) -> Result<Self> {
        let features = u32::try_from(features)
            .ok()
            .filter(|&f| f > 0)
            .ok_or_else(|| Error::Invalid(format!("cannot count {features} features")))?;
        if !(1..=MAX_VMS).contains(&slots) {
            return Err(Error::Invalid(format!(
                "cannot watch {slots} VMs at once (1 to {MAX_VMS})"
            )));
        }
        let chunks = features.div_ceil(CHUNK as u32);
        Ok(Self {
            features,
            chunks,
            slots,
        })
    }

    /// Values in the `counts` map.
    pub fn entries(&self) -> u32 {
        self.chunks * self.slots
    }

    /// Key of the first value of `slot`'s row.
    pub fn first_key(&self, slot: usize) -> u32 {
        slot as u32 * self.chunks
    }

    pub fn width(&self) -> usize {
        self.features as usize
    }
}

/// Most probes the `seq:` features of one collector may name (the tracked
/// probes): the pair table (`seq_pairs`) is an array of tracked x tracked
/// entries, at most 65,536 (512 KiB), allocated at load, and every pair of
/// them can be a feature.
pub const MAX_SEQ_PROBES: usize = 256;

/// The `seq_pairs` key of the transition from tracked probe `from` to `to`
/// (ids from 1) among `tracked` of them: bpf/vmwatch.bpf.c's
/// `count_transition` computes the same, as [`Layout`] and `count_in_slot`
/// agree on the `counts` keys.
pub fn seq_pair_key(from: u16, to: u16, tracked: usize) -> u32 {
    debug_assert!((1..=tracked).contains(&(from as usize)));
    debug_assert!((1..=tracked).contains(&(to as usize)));
    (u32::from(from) - 1) * tracked as u32 + (u32::from(to) - 1)
}

/// The BPF cookie of a USDT site of `column`, on a link with switch
/// `switch` (`None`: always counted), with entry `site` - 1 in the `sites`
/// table (0: none): `struct usdt_cookie` of bpf/vmwatch.bpf.c, its only
/// definition.
pub fn usdt_cookie(column: u32, switch: Option<u32>, site: u16) -> u64 {
    let sw = switch.map_or(0, |s| {
        u16::try_from(s + 1).expect("link switches fit the cookie (MAX_SWITCHES)")
    });
    let cookie = types::usdt_cookie { column, sw, site };
    // SAFETY: a repr(C) struct of plain integers without padding, which
    // `transmute` checks is as large as a u64.
    unsafe { std::mem::transmute::<types::usdt_cookie, u64>(cookie) }
}

/// Storage for the BPF object; it must outlive whatever is loaded from it.
pub struct BpfObjects {
    pub(crate) object: MaybeUninit<OpenObject>,
}

impl Default for BpfObjects {
    fn default() -> Self {
        Self {
            object: MaybeUninit::uninit(),
        }
    }
}
