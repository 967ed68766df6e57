//! vmwatch: per-VM behaviour profiles of QEMU/KVM guests from the host,
//! counted in the kernel with eBPF.
//!
//! Data flows one way: discovery of processes, probes and tracepoints
//! ([`discover`]) → the BPF object and its links ([`attach`], with the
//! kernel/user layout in [`bpf`]) → per-window drain of the per-VM
//! counters ([`drain`]) → a [`counter::Counter`] (BPF, or strace for the
//! baseline) → a [`session`] that yields one row per VM and window. What
//! follows the rows (datasets, selection, models, verdicts) needs no BPF
//! and lives in the `vmwatch-core` crate.

pub mod agent;
pub mod attach;
pub mod bpf;
pub mod counter;
pub mod discover;
pub mod drain;
pub mod error;
pub mod govern;
pub mod session;
pub mod signals;

pub use error::{Error, Result};
