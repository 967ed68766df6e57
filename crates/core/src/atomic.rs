//! Output files. A regular file (or a path where nothing is yet) is replaced
//! atomically: a temporary file in the same directory, fsync, then rename
//! over the target, so readers see the old file or the new one. Renaming
//! over a character device or a FIFO would replace the node itself (as root,
//! `-o /dev/null` would turn /dev/null into a regular file), so those are
//! written through instead. Anything else is refused, symbolic links
//! included: vmwatch runs as root, and following a link planted in a
//! world-writable directory would let anyone redirect its writes.

use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Creates `dir` (mode 0700) or checks that an existing one is a folder of
/// ours that nobody else can write.
pub fn private_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("cannot create {}", dir.display()), e)),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(Error::Invalid(format!(
            "{} is not a folder owned by uid {me} and writable only by it",
            dir.display()
        )));
    }
    Ok(())
}

/// What an output path leads to, and so how vmwatch writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Nothing is there yet: created.
    New,
    /// A regular file (not a link): replaced by a temporary file's rename.
    Regular,
    /// A character device or FIFO, directly or through symbolic links
    /// (`/dev/stdout`): written through as it is.
    Stream,
}

fn is_stream(t: FileType) -> bool {
    t.is_char_device() || t.is_fifo()
}

fn kind_name(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Classifies `path` for writing, refusing what vmwatch does not write:
/// symbolic links to anything but a device or FIFO, directories, sockets
/// and block devices.
pub fn classify(path: &Path) -> Result<Output> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Output::New),
        Err(e) => return Err(Error::write(path, e)),
    };
    let t = meta.file_type();
    if t.is_file() {
        return Ok(Output::Regular);
    }
    if is_stream(t) {
        return Ok(Output::Stream);
    }
    if !t.is_symlink() {
        return Err(Error::Invalid(format!(
            "cannot write {}: it is {} (vmwatch writes regular files, character devices such \
             as /dev/null, and FIFOs)",
            path.display(),
            kind_name(t)
        )));
    }
    let target = link_target(path);
    match std::fs::metadata(path) {
        Ok(m) if is_stream(m.file_type()) => Ok(Output::Stream),
        Ok(m) if m.is_file() => Err(Error::Invalid(format!(
            "{} is a symbolic link to {}: vmwatch replaces files atomically and does not \
             follow links, so give {} itself",
            path.display(),
            target.display(),
            target.display()
        ))),
        Ok(m) => Err(Error::Invalid(format!(
            "cannot write {}: it is a symbolic link to {}, which is {} (vmwatch writes regular \
             files, character devices such as /dev/null, and FIFOs)",
            path.display(),
            target.display(),
            kind_name(m.file_type())
        ))),
        Err(_) => Err(Error::Invalid(format!(
            "{} is a symbolic link to {}, which does not exist: vmwatch does not follow links, \
             so give {} itself",
            path.display(),
            target.display(),
            target.display()
        ))),
    }
}

/// Where the link `path` finally leads, for messages.
fn link_target(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| match std::fs::read_link(path) {
        Ok(t) if t.is_relative() => path.parent().unwrap_or(Path::new(".")).join(t),
        Ok(t) => t,
        Err(_) => path.to_owned(),
    })
}

/// Opens a character device or FIFO that [`classify`] returned as
/// [`Output::Stream`] for writing: without O_CREAT or O_TRUNC, and checked
/// after opening, so a path swapped for a regular file in between is not
/// written.
pub fn open_stream(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        // A terminal given as output must not become the controlling one.
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::write(path, e))?;
    let t = file
        .metadata()
        .map_err(|e| Error::write(path, e))?
        .file_type();
    if !is_stream(t) {
        return Err(Error::Invalid(format!(
            "cannot write {}: it changed while being opened (now {})",
            path.display(),
            if t.is_file() {
                "a regular file"
            } else {
                kind_name(t)
            }
        )));
    }
    Ok(file)
}

/// A temporary file beside `path` (same directory, so a rename replaces
/// `path` atomically), created exclusively and removed when dropped. It
/// takes the mode and (best effort) the owner of the file it will replace.
pub fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "vmwatch".into(), |n| n.to_string_lossy());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::write(path, e))?;
    if let Ok(old) = std::fs::symlink_metadata(path) {
        if old.is_file() {
            keep_owner_and_mode(tmp.as_file(), &old).map_err(|e| Error::write(path, e))?;
        }
    }
    Ok(tmp)
}

fn keep_owner_and_mode(file: &File, old: &Metadata) -> std::io::Result<()> {
    // Only root can give a file away; others keep theirs.
    let _ = std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid()));
    file.set_permissions(old.permissions())
}

/// Writes `contents` to `path`: a regular file is replaced atomically, a
/// device or FIFO written through; see [`classify`] for what is refused.
pub fn write(path: &Path, contents: &[u8]) -> Result<()> {
    if classify(path)? == Output::Stream {
        let mut file = open_stream(path)?;
        return file.write_all(contents).map_err(|e| Error::write(path, e));
    }
    let mut tmp = temp_beside(path)?;
    tmp.write_all(contents).map_err(|e| Error::write(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::write(path, e))?;
    tmp.persist(path).map_err(|e| Error::write(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorMessage as _;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn classifies_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = d.join("f");
        assert_eq!(classify(&file).unwrap(), Output::New);
        std::fs::write(&file, "x").unwrap();
        assert_eq!(classify(&file).unwrap(), Output::Regular);
        assert_eq!(classify(Path::new("/dev/null")).unwrap(), Output::Stream);
        let link = d.join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = classify(&link).error_message();
        let real = file.canonicalize().unwrap();
        assert!(
            err.contains(&format!("is a symbolic link to {}", real.display())),
            "{err}"
        );
        let null_link = d.join("n");
        std::os::unix::fs::symlink("/dev/null", &null_link).unwrap();
        assert_eq!(classify(&null_link).unwrap(), Output::Stream);
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink("nowhere", &dangling).unwrap();
        let err = classify(&dangling).error_message();
        assert!(err.contains("which does not exist"), "{err}");
        assert!(
            err.contains(&d.join("nowhere").display().to_string()),
            "{err}"
        );
        let dir_link = d.join("dl");
        std::os::unix::fs::symlink(d, &dir_link).unwrap();
        let err = classify(&dir_link).error_message();
        assert!(err.contains("which is a directory"), "{err}");
        let err = classify(d).error_message();
        assert!(err.contains("it is a directory"), "{err}");
    }

    #[test]
    fn replaces_keeping_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        write(&file, b"one").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Devices are written through: tests/files.rs, on private nodes.
    }
}
