//! Drain: every window, one batched read of the cumulative per-CPU counters
//! of the watched slots, summed over CPUs, minus each slot's previous
//! snapshot. The kernel only ever adds, so a hit that races with a drain
//! lands in exactly one window, and a freed slot's leftovers become the next
//! occupant's baseline without any reset.

use std::ffi::c_void;
use std::os::fd::RawFd;

use crate::bpf::{Layout, CHUNK};
use crate::error::{Error, Result};

/// Reads rows of the `counts` map and turns them into per-window counts.
pub struct Drainer {
    /// The `counts` map; owned by the loaded object, which outlives this.
    fd: RawFd,
    layout: Layout,
    ncpus: usize,
    /// Each slot's cumulative counts at its previous read, while it is open.
    prev: Vec<Option<Vec<u64>>>,
    keys: Vec<u32>,
    values: Vec<u64>,
}

impl Drainer {
    pub fn new(fd: RawFd, layout: Layout) -> Result<Self> {
        let ncpus =
            libbpf_rs::num_possible_cpus().map_err(|e| Error::bpf("counting possible CPUs", e))?;
        Ok(Self {
            fd,
            layout,
            ncpus,
            prev: vec![None; layout.slots as usize],
            keys: Vec::new(),
            values: Vec::new(),
        })
    }

    /// Starts `slot` at what its counters hold now: counts left by a
    /// previous occupant are the baseline, not data. Call before the
    /// process is published to the BPF side.
    pub fn open(&mut self, slot: usize) -> Result<()> {
        self.prev[slot] = Some(self.read_rows(slot, 1)?);
        Ok(())
    }

    pub fn close(&mut self, slot: usize) {
        self.prev[slot] = None;
    }

    /// Slots up to the last open one: what one batched read covers.
    fn used(&self) -> usize {
        self.prev
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1)
    }

    /// Counts since the previous drain of every open slot, by slot.
    pub fn drain(&mut self) -> Result<Vec<(usize, Vec<u64>)>> {
        let used = self.used();
        if used == 0 {
            return Ok(Vec::new());
        }
        let rows = self.read_rows(0, used)?;
        let width = self.layout.width();
        let mut out = Vec::new();
        for (slot, prev) in self.prev.iter_mut().enumerate().take(used) {
            let Some(prev) = prev else { continue };
            let cur = &rows[slot * width..(slot + 1) * width];
            let counts = cur
                .iter()
                .zip(prev.iter())
                .map(|(c, p)| c.wrapping_sub(*p))
                .collect();
            prev.copy_from_slice(cur);
            out.push((slot, counts));
        }
        Ok(out)
    }

    /// Every open slot's cumulative counts as they are now (the cost
    /// governor measures its phases by them); the next drain is unchanged.
    pub fn peek(&mut self) -> Result<Vec<(usize, Vec<u64>)>> {
        let used = self.used();
        if used == 0 {
            return Ok(Vec::new());
        }
        let rows = self.read_rows(0, used)?;
        let width = self.layout.width();
        Ok((0..used)
            .filter(|&slot| self.prev[slot].is_some())
            .map(|slot| (slot, rows[slot * width..(slot + 1) * width].to_vec()))
            .collect())
    }

    /// Cumulative counts (summed over CPUs) of `n` slots from `first`:
    /// one batched map read of their chunks.
    fn read_rows(&mut self, first: usize, n: usize) -> Result<Vec<u64>> {
        let width = self.layout.width();
        let chunks = self.layout.chunks as usize;
        let count = n * chunks;
        let start = self.layout.first_key(first);
        let per_key = CHUNK * self.ncpus;
        self.keys.resize(count, 0);
        self.values.resize(count * per_key, 0);
        // The batch starts after `in_batch`; no token means from key 0.
        let mut in_batch = start.wrapping_sub(1);
        let mut out_batch = 0u32;
        let mut done = 0usize;
        while done < count {
            let mut got = (count - done) as u32;
            let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
                ..Default::default()
            };
            let in_ptr = if start == 0 && done == 0 {
                std::ptr::null_mut()
            } else {
                (&mut in_batch as *mut u32).cast::<c_void>()
            };
            // SAFETY: past `done`, the buffers hold `count - done` keys and
            // as many values of `ncpus` chunks; the kernel writes at most `got`.
            let ret = unsafe {
                libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                    self.fd,
                    in_ptr,
                    (&mut out_batch as *mut u32).cast::<c_void>(),
                    self.keys[done..].as_mut_ptr().cast::<c_void>(),
                    self.values[done * per_key..].as_mut_ptr().cast::<c_void>(),
                    &mut got,
                    &opts,
                )
            };
            if ret < 0 && ret != -libc::ENOENT {
                return Err(Error::io(
                    "reading the counter map",
                    std::io::Error::from_raw_os_error(-ret),
                ));
            }
            if got == 0 {
                return Err(Error::Invalid(format!(
                    "counter map ended after {done} of {count} entries"
                )));
            }
            done += got as usize;
            in_batch = out_batch;
        }
        // values: [slot][chunk][cpu][CHUNK] -> rows: [slot][feature]
        let mut rows = vec![0u64; n * width];
        for (slot, row) in rows.chunks_exact_mut(width).enumerate() {
            for (c, part) in row.chunks_mut(CHUNK).enumerate() {
                let base = (slot * chunks + c) * per_key;
                for cpu in 0..self.ncpus {
                    let vals = &self.values[base + cpu * CHUNK..][..part.len()];
                    for (sum, v) in part.iter_mut().zip(vals) {
                        *sum += v;
                    }
                }
            }
        }
        Ok(rows)
    }
}
