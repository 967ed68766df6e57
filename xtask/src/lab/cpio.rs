//! A writer for the `newc` cpio format (what the kernel unpacks as an initramfs).
//!
//! The archive is deterministic: entries are written in the order given, with
//! owner root, mtime 0 and inode numbers counted from 1.

use std::io::{self, Write};

/// The kind of an archive entry, with its payload.
pub enum Kind<'a> {
    Dir,
    File(&'a [u8]),
    Symlink(&'a str),
    /// A character device (major, minor).
    CharDev(u32, u32),
}

/// Writes `newc` entries to `out`; [`Writer::finish`] adds the trailer.
pub struct Writer<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// Adds one entry. `name` is relative (no leading `/`); `perm` holds the
    /// permission bits only (the file type comes from `kind`).
    pub fn entry(&mut self, name: &str, perm: u32, kind: Kind) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let (mode, data, nlink, rdev): (u32, &[u8], u32, (u32, u32)) = match kind {
            Kind::Dir => (S_IFDIR | perm, &[], 2, (0, 0)),
            Kind::File(d) => (S_IFREG | perm, d, 1, (0, 0)),
            Kind::Symlink(t) => (S_IFLNK | 0o777, t.as_bytes(), 1, (0, 0)),
            Kind::CharDev(maj, min) => (S_IFCHR | perm, &[], 1, (maj, min)),
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, mode, nlink, data.len(), rdev)?;
        self.raw(data)?;
        self.pad()
    }

    /// Writes the `TRAILER!!!` entry and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 1, 0, (0, 0))?;
        self.pad()?;
        Ok(self.out)
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: usize,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let namesize = name.len() as u32 + 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
            0, 0, 0, 0, 0, rdev.0, rdev.1, 0
        );
        self.raw(header.as_bytes())?;
        self.raw(name.as_bytes())?;
        self.raw(&[0])?;
        self.pad()
    }

    fn raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Pads to a multiple of 4 bytes.
    fn pad(&mut self) -> io::Result<()> {
        let rem = (4 - self.written % 4) % 4;
        self.raw(&[0u8; 3][..rem as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let mut w = Writer::new(Vec::new());
        w.entry("/bin", 0o755, Kind::Dir).unwrap();
        w.entry("bin/hi", 0o644, Kind::File(b"hello")).unwrap();
        w.entry("bin/sh", 0, Kind::Symlink("busybox")).unwrap();
        w.entry("dev/console", 0o600, Kind::CharDev(5, 1)).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        // First header: 110 bytes, then "bin\0" (4 bytes): 114 → padded to 116.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[6..14], b"00000001"); // inode
        assert_eq!(&out[14..22], b"000041ED"); // dir 0755
        assert_eq!(&out[110..114], b"bin\0");
        let second = &out[116..];
        assert_eq!(&second[14..22], b"000081A4"); // file 0644
        assert_eq!(&second[54..62], b"00000005"); // size
        assert_eq!(&second[110..117], b"bin/hi\0");
        // Name ends at 117 → pad to 120, then the data.
        assert_eq!(&second[120..125], b"hello");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/sh\0"));
        assert!(text.contains("busybox"));
        // The device entry carries rdev 5:1.
        let dev = text.find("dev/console").unwrap() - 110;
        assert_eq!(&out[dev + 78..dev + 94], b"0000000500000001");
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn cpio_tool_reads_it() {
        // Cross-check with GNU cpio when it is installed (not a project dependency).
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipping: GNU cpio is not installed");
            return;
        }
        let mut w = Writer::new(Vec::new());
        w.entry("a", 0o755, Kind::Dir).unwrap();
        w.entry("a/b.txt", 0o644, Kind::File(b"abc\n")).unwrap();
        w.entry("a/c", 0, Kind::Symlink("b.txt")).unwrap();
        let data = w.finish().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("a/b.txt"), "{listing}");
        assert!(listing.contains("a/c -> b.txt"), "{listing}");
    }
}
