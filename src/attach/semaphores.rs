//! USDT semaphores (the `*_ENABLED()` flags) raised and lowered by vmwatch
//! itself in each watched process.
//!
//! What a semaphore gates depends on the program: the fixture's lazy probes
//! and the QEMU probes QEMU guards with `trace_event_get_state_backends()`
//! (e.g. `memory_region_ops_read`, whose arguments cost work) fire only
//! while it is up; QEMU's dtrace and ust backends call most other probes
//! unconditionally, so their sites trap whenever a uprobe is attached
//! (measured: `tests/qemu.rs`, the governor's "fired while their semaphore
//! was down"). The kernel could raise them through the uprobe
//! `ref_ctr_offset`, but on the kernels measured here it misses processes
//! that start while the probe is attached: their semaphores stay 0 and
//! gated probes never fire. Raising them per watched process also keeps
//! the gated probes of QEMU processes vmwatch does not watch off.
//!
//! A vmwatch killed with SIGKILL cannot lower what it raised, so every raise
//! is first written to a record under [`RUN_DIR`] (one folder per vmwatch
//! instance, one file per process, both named by PID and start time); the
//! next vmwatch to start, or `vmwatch cleanup`, lowers what dead instances
//! left raised ([`repair`]). Every read-modify-write of a semaphore by any
//! vmwatch holds one lock (`RUN_DIR/lock`), so two vmwatch instances never
//! lose each other's increments; docs/ARCHITECTURE.md says why the writes
//! are safe against other tracers.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::discover::procs;
use crate::error::{Error, Result};
use vmwatch_core::error::chain;

/// Where vmwatch instances record the semaphores they raised (root only).
pub const RUN_DIR: &str = "/run/vmwatch";

/// Semaphores raised in one process, lowered by [`Raised::lower`] (also on
/// drop).
#[derive(Debug, Default)]
pub struct Raised {
    pid: u32,
    /// The process's memory, opened when raising: after the process exits
    /// it refers to nothing, so a reused PID is never written to.
    mem: Option<File>,
    addrs: Vec<u64>,
    /// Which of `addrs` the cost governor has turned off for now (this
    /// instance's increment taken back); [`Raised::lower`] skips them.
    off: Vec<bool>,
    /// This instance's record of `addrs`, removed once they are lowered.
    record: Option<PathBuf>,
}

/// A file mapping of a process: [start, end) at file offset `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) offset: u64,
    pub(crate) writable: bool,
}

/// What a record file holds: the semaphores one vmwatch raised in one
/// process, by virtual address.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    pid: u32,
    start_time: u64,
    addrs: Vec<u64>,
}

/// Increments, in process `pid`, the semaphores at the given file offsets
/// of its executable (identified by device and inode).
pub fn raise(pid: u32, binary_id: (u64, u64), file_offsets: &[u64]) -> Result<Raised> {
    let maps = mappings(pid, binary_id)?;
    let addrs = file_offsets
        .iter()
        .map(|&off| {
            address_of(&maps, off).ok_or_else(|| {
                Error::Invalid(format!(
                    "PID {pid}: semaphore at file offset {off:#x} is not mapped writable"
                ))
            })
        })
        .collect::<Result<Vec<u64>>>()?;
    let mem = open_mem(pid)?;
    let start_time = procs::start_time(pid).ok_or(Error::NoSuchProcess(pid))?;
    let _lock = Lock::take();
    // Recorded before the first write: a SIGKILL from here on is repaired.
    let record = write_record(&Record {
        pid,
        start_time,
        addrs: addrs.clone(),
    });
    let mut raised = Raised {
        pid,
        mem: Some(mem),
        addrs: Vec::with_capacity(addrs.len()),
        off: Vec::new(),
        record,
    };
    for addr in addrs {
        let mem = raised.mem.as_ref().expect("opened above");
        if let Err(e) = add(mem, addr, 1) {
            raised.lower_locked();
            return Err(Error::io(
                format!("raising USDT semaphores in PID {pid}"),
                e,
            ));
        }
        raised.addrs.push(addr);
    }
    raised.off = vec![false; raised.addrs.len()];
    Ok(raised)
}

impl Raised {
    /// Decrements every semaphore this raised. A process that has exited
    /// needs nothing; other failures are logged.
    pub fn lower(&mut self) {
        if self.mem.is_none() {
            return;
        }
        let _lock = Lock::take();
        self.lower_locked();
    }

    fn lower_locked(&mut self) {
        let Some(mem) = self.mem.take() else { return };
        let off = std::mem::take(&mut self.off);
        for (i, addr) in std::mem::take(&mut self.addrs).into_iter().enumerate() {
            if off.get(i).copied().unwrap_or(false) {
                continue;
            }
            if let Err(e) = add(&mem, addr, -1) {
                if !exited(&e) {
                    tracing::warn!("lowering a USDT semaphore in PID {}: {e}", self.pid);
                }
                break;
            }
        }
        if let Some(record) = self.record.take() {
            remove_record(&record);
        }
    }

    /// Turns the semaphores at `indices` (positions in the order they were
    /// raised) off or on: this instance's increment is taken back or put
    /// back, under the lock every vmwatch takes. Those already in that state
    /// are left alone. Returns, for each index changed, the value the
    /// semaphore held before: more than this instance's share (1 when on,
    /// 0 when off) means another tracer holds it too.
    ///
    /// Off, a semaphore is still in the record: if vmwatch is killed, the
    /// repair lowers it once more, which saturates at 0 (and would take
    /// another tracer's increment only if one raised it during that off
    /// phase, which the next turn-on sees and ends).
    pub fn set(&mut self, indices: &[usize], on: bool) -> Result<Vec<(usize, u16)>> {
        let Some(mem) = self.mem.as_ref() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(indices.len());
        let _lock = Lock::take();
        for &i in indices {
            let (Some(&addr), Some(off)) = (self.addrs.get(i), self.off.get_mut(i)) else {
                continue;
            };
            if *off != on {
                continue;
            }
            match add_returning(mem, addr, if on { 1 } else { -1 }) {
                Ok(before) => {
                    *off = !on;
                    out.push((i, before));
                }
                Err(e) => {
                    return Err(Error::io(
                        format!(
                            "turning a USDT semaphore {} in PID {}",
                            if on { "on" } else { "off" },
                            self.pid
                        ),
                        e,
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Number of semaphores raised.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.lower();
    }
}

/// Errors of /proc/PID/mem that mean the process has exited.
fn exited(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::EIO))
        || e.kind() == std::io::ErrorKind::UnexpectedEof
}

/// The lock every semaphore read-modify-write of every vmwatch holds.
/// Without [`RUN_DIR`] (not root, read-only /run) there is nothing to share
/// it with and it is not taken.
struct Lock {
    /// Holds the flock until dropped.
    _file: Option<File>,
}

impl Lock {
    fn take() -> Self {
        let Some(dir) = run_dir() else {
            return Self { _file: None };
        };
        let file = File::options()
            .create(true)
            .append(true)
            .open(dir.join("lock"));
        match file {
            Ok(f) => {
                // SAFETY: flock on a descriptor we own; released on close.
                if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
                    tracing::warn!(
                        "locking {}/lock: {}",
                        dir.display(),
                        std::io::Error::last_os_error()
                    );
                }
                Self { _file: Some(f) }
            }
            Err(e) => {
                tracing::warn!("opening {}/lock: {e}", dir.display());
                Self { _file: None }
            }
        }
    }
}

/// [`RUN_DIR`] and this instance's record folder in it, created once; `None`
/// (with one warning) when they cannot be used.
fn run_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| match private_dir(Path::new(RUN_DIR)) {
        Ok(()) => Some(PathBuf::from(RUN_DIR)),
        Err(e) => {
            tracing::warn!(
                "{}: semaphores raised by this vmwatch cannot be restored if it is killed",
                chain(&e)
            );
            None
        }
    })
    .as_deref()
}

/// Creates `dir` (mode 0700) or checks an existing one is private.
fn private_dir(dir: &Path) -> Result<()> {
    Ok(vmwatch_core::atomic::private_dir(dir)?)
}

/// `RUN_DIR/raised/PID.START`: this instance's records.
fn instance_dir(run: &Path) -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| {
            let pid = std::process::id();
            let start = procs::start_time(pid)?;
            Some(run.join("raised").join(format!("{pid}.{start}")))
        })
        .clone()?;
    // Made again each time: the folder goes when its last record does.
    let made = private_dir(dir.parent().expect("has a parent")).and_then(|()| private_dir(&dir));
    if let Err(e) = made {
        tracing::warn!(
            "{}: semaphores raised by this vmwatch cannot be restored if it is killed",
            chain(&e)
        );
        return None;
    }
    Some(dir)
}

fn write_record(record: &Record) -> Option<PathBuf> {
    let dir = instance_dir(run_dir()?)?;
    let path = dir.join(format!("{}.{}.json", record.pid, record.start_time));
    let json = serde_json::to_vec(record).expect("a record serializes");
    match vmwatch_core::atomic::write(&path, &json) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(
                "{}: semaphores raised in PID {} cannot be restored if vmwatch is killed",
                chain(&e),
                record.pid
            );
            None
        }
    }
}

/// Removes a record, and its instance's folder once it is empty.
fn remove_record(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        tracing::warn!("removing {}: {e}", path.display());
    }
    if let Some(dir) = path.parent() {
        // Fails while other records remain: that is the point.
        let _ = fs::remove_dir(dir);
    }
}

/// What [`repair`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repair {
    /// (vmwatch PID that died, process PID, semaphores lowered).
    pub restored: Vec<(u32, u32, usize)>,
    /// Records of processes that exited since (nothing to lower).
    pub gone: usize,
    /// Running vmwatch instances (other than this one) and how many
    /// processes each holds semaphores in; left alone.
    pub live: Vec<(u32, usize)>,
}

/// Lowers every semaphore that a vmwatch instance which is no longer
/// running raised and never lowered, and removes its records. Instances
/// still running are left alone. Without [`RUN_DIR`] there is nothing to do.
pub fn repair() -> Result<Repair> {
    let mut out = Repair::default();
    let raised = Path::new(RUN_DIR).join("raised");
    if !raised.is_dir() {
        return Ok(out);
    }
    let _lock = Lock::take();
    let entries = fs::read_dir(&raised)
        .map_err(|e| Error::io(format!("cannot read {}", raised.display()), e))?;
    let me = std::process::id();
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some((pid, start)) = pid_and_start(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let files: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if pid == me || procs::start_time(pid) == Some(start) {
            if pid != me {
                out.live.push((pid, files.len()));
            }
            continue;
        }
        for file in files {
            match restore(&file) {
                Ok(Some((target, n))) => out.restored.push((pid, target, n)),
                Ok(None) => out.gone += 1,
                Err(e) => tracing::warn!("{}", chain(&e)),
            }
            remove_record(&file);
        }
        // A folder without records (its instance ended) goes too.
        let _ = fs::remove_dir(&dir);
    }
    Ok(out)
}

/// Lowers the semaphores of one record; `None` when its process is gone.
fn restore(path: &Path) -> Result<Option<(u32, usize)>> {
    let text = fs::read(path).map_err(|source| Error::read(path.to_owned(), source))?;
    let record: Record = serde_json::from_slice(&text).map_err(|e| {
        Error::Invalid(format!("{} is not a semaphore record: {e}", path.display()))
    })?;
    if procs::start_time(record.pid) != Some(record.start_time) {
        return Ok(None);
    }
    let Ok(mem) = open_mem(record.pid) else {
        return Ok(None);
    };
    let mut lowered = 0;
    for addr in &record.addrs {
        match add(&mem, *addr, -1) {
            Ok(()) => lowered += 1,
            Err(e) if exited(&e) => return Ok(None),
            Err(e) => {
                return Err(Error::io(
                    format!("lowering USDT semaphores in PID {}", record.pid),
                    e,
                ))
            }
        }
    }
    Ok(Some((record.pid, lowered)))
}

/// `PID.START` (a record folder's or file's name, without `.json`).
fn pid_and_start(name: &str) -> Option<(u32, u64)> {
    let (pid, start) = name.trim_end_matches(".json").split_once('.')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Reads the current value of the semaphore at `file_offset` (for tests
/// and diagnostics).
pub fn value(pid: u32, binary_id: (u64, u64), file_offset: u64) -> Result<u16> {
    let maps = mappings(pid, binary_id)?;
    let addr = address_of(&maps, file_offset)
        .ok_or_else(|| Error::Invalid(format!("PID {pid}: offset {file_offset:#x} not mapped")))?;
    let mem = open_mem(pid)?;
    let mut buf = [0u8; 2];
    mem.read_exact_at(&mut buf, addr)
        .map_err(|e| Error::io(format!("reading memory of PID {pid}"), e))?;
    Ok(u16::from_ne_bytes(buf))
}

fn open_mem(pid: u32) -> Result<File> {
    File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|e| Error::io(format!("opening memory of PID {pid}"), e))
}

fn add(mem: &File, addr: u64, delta: i32) -> std::io::Result<()> {
    add_returning(mem, addr, delta).map(|_| ())
}

/// [`add`], returning the value before.
fn add_returning(mem: &File, addr: u64, delta: i32) -> std::io::Result<u16> {
    let mut buf = [0u8; 2];
    mem.read_exact_at(&mut buf, addr)?;
    let before = u16::from_ne_bytes(buf);
    let v = if delta > 0 {
        before.saturating_add(delta as u16)
    } else {
        before.saturating_sub(delta.unsigned_abs() as u16)
    };
    mem.write_all_at(&v.to_ne_bytes(), addr)?;
    Ok(before)
}

fn address_of(maps: &[Mapping], file_offset: u64) -> Option<u64> {
    maps.iter()
        .filter(|m| m.writable)
        .find(|m| file_offset >= m.offset && file_offset < m.offset + (m.end - m.start))
        .map(|m| m.start + (file_offset - m.offset))
}

/// Mappings of the executable `binary_id` in `pid`, from /proc/PID/maps.
pub(crate) fn mappings(pid: u32, binary_id: (u64, u64)) -> Result<Vec<Mapping>> {
    let text =
        fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|_| Error::NoSuchProcess(pid))?;
    let maps: Vec<Mapping> = text
        .lines()
        .filter_map(|line| parse_maps_line(line, binary_id))
        .collect();
    if maps.is_empty() {
        return Err(Error::Invalid(format!(
            "PID {pid} does not map its executable"
        )));
    }
    Ok(maps)
}

fn parse_maps_line(line: &str, (dev, ino): (u64, u64)) -> Option<Mapping> {
    let mut f = line.split_whitespace();
    let (range, perms, offset, devs, inode) =
        (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    if inode.parse::<u64>().ok()? != ino {
        return None;
    }
    // Overlay and btrfs may show another device number here than stat(2);
    // the inode alone then has to do.
    let (maj, min) = devs.split_once(':')?;
    let (maj, min) = (
        u32::from_str_radix(maj, 16).ok()?,
        u32::from_str_radix(min, 16).ok()?,
    );
    if libc::makedev(maj, min) != dev {
        tracing::trace!("mapping device {maj}:{min} differs from the executable's");
    }
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        writable: perms.as_bytes().get(1) == Some(&b'w'),
    })
}

/// Device and inode of a file, as /proc/PID/maps identifies mappings.
pub fn file_id(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_and_addresses() {
        let id = (libc::makedev(0xfe, 0x01), 1234);
        let text = "55d0c0a00000-55d0c0a19000 r--p 00000000 fe:01 1234 /usr/bin/qemu\n\
                    55d0c0a19000-55d0c0a64000 r-xp 00018000 fe:01 1234 /usr/bin/qemu\n\
                    55d0c0a68000-55d0c0a69000 rw-p 00065000 fe:01 1234 /usr/bin/qemu\n\
                    7f0000000000-7f0000001000 rw-p 00065000 fe:01 999 /lib/other.so\n";
        let maps: Vec<Mapping> = text
            .lines()
            .filter_map(|l| parse_maps_line(l, id))
            .collect();
        assert_eq!(maps.len(), 3);
        assert_eq!(address_of(&maps, 0x65da8), Some(0x55d0c0a68da8));
        // Read-only mappings never hold a semaphore.
        assert_eq!(address_of(&maps, 0x100), None);
    }

    #[test]
    fn raise_and_lower_in_own_process() {
        // A semaphore-like u16 in our own writable data, found through maps.
        static mut FLAG: u16 = 7;
        let addr = std::ptr::addr_of!(FLAG) as u64;
        let pid = std::process::id();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let id = file_id(&exe).unwrap();
        let maps = mappings(pid, id).unwrap();
        let m = maps
            .iter()
            .find(|m| m.writable && addr >= m.start && addr < m.end)
            .expect("FLAG lives in a writable file mapping");
        let off = addr - m.start + m.offset;
        let mut r = raise(pid, id, &[off]).unwrap();
        // SAFETY: plain read of our own static.
        assert_eq!(
            unsafe { std::ptr::read_volatile(std::ptr::addr_of!(FLAG)) },
            8
        );
        assert_eq!(value(pid, id, off).unwrap(), 8);
        r.lower();
        assert_eq!(
            unsafe { std::ptr::read_volatile(std::ptr::addr_of!(FLAG)) },
            7
        );
    }
}
