//! USDT semaphores (the `*_ENABLED()` flags QEMU checks before a probe)
//! raised and lowered by vmwatch itself in each watched process.
//!
//! The kernel can do this through the uprobe `ref_ctr_offset`, but on the
//! kernels measured here it misses processes that start while the probe is
//! attached: their semaphores stay 0 and their probes never fire. Raising
//! them per watched process also means QEMU processes vmwatch does not watch
//! keep their probes off. The price: if vmwatch is killed with SIGKILL, the
//! semaphores it raised stay raised (QEMU then evaluates those probes'
//! arguments, but no breakpoint remains to trap).

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::error::{Error, Result};

/// Semaphores raised in one process, lowered by [`Raised::lower`].
#[derive(Debug, Default)]
pub struct Raised {
    pid: u32,
    addrs: Vec<u64>,
}

/// A file mapping of a process: [start, end) at file offset `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    writable: bool,
}

/// Increments, in process `pid`, the semaphores at the given file offsets
/// of its executable (identified by device and inode).
pub fn raise(pid: u32, binary_id: (u64, u64), file_offsets: &[u64]) -> Result<Raised> {
    let maps = mappings(pid, binary_id)?;
    let mem = open_mem(pid)?;
    let mut raised = Raised {
        pid,
        addrs: Vec::with_capacity(file_offsets.len()),
    };
    for &off in file_offsets {
        let Some(addr) = address_of(&maps, off) else {
            return Err(Error::Invalid(format!(
                "PID {pid}: semaphore at file offset {off:#x} is not mapped writable"
            )));
        };
        if let Err(e) = add(&mem, addr, 1) {
            raised.lower();
            return Err(Error::io(
                format!("raising USDT semaphores in PID {pid}"),
                e,
            ));
        }
        raised.addrs.push(addr);
    }
    Ok(raised)
}

impl Raised {
    /// Decrements every semaphore this raised. A process that has exited
    /// needs nothing; other failures are logged.
    pub fn lower(&mut self) {
        if self.addrs.is_empty() {
            return;
        }
        let addrs = std::mem::take(&mut self.addrs);
        let Ok(mem) = open_mem(self.pid) else { return };
        for addr in addrs {
            if let Err(e) = add(&mem, addr, -1) {
                if e.raw_os_error() != Some(libc::ESRCH) && e.raw_os_error() != Some(libc::EIO) {
                    tracing::warn!("lowering a USDT semaphore in PID {}: {e}", self.pid);
                }
                return;
            }
        }
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
    let mut buf = [0u8; 2];
    mem.read_exact_at(&mut buf, addr)?;
    let v = u16::from_ne_bytes(buf);
    let v = if delta > 0 {
        v.saturating_add(delta as u16)
    } else {
        v.saturating_sub(delta.unsigned_abs() as u16)
    };
    mem.write_all_at(&v.to_ne_bytes(), addr)
}

fn address_of(maps: &[Mapping], file_offset: u64) -> Option<u64> {
    maps.iter()
        .filter(|m| m.writable)
        .find(|m| file_offset >= m.offset && file_offset < m.offset + (m.end - m.start))
        .map(|m| m.start + (file_offset - m.offset))
}

/// Mappings of the executable `binary_id` in `pid`, from /proc/PID/maps.
fn mappings(pid: u32, binary_id: (u64, u64)) -> Result<Vec<Mapping>> {
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
