//! Dataset files (DESIGN.md): CSV, optionally gzip-compressed, one row per
//! (VM, window) with the leading columns below and one column per feature.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{Error, Result};

/// The leading columns, in order.
pub const LEADING: [&str; 6] = [
    "vm",
    "pid",
    "label",
    "window",
    "start_unix_ms",
    "duration_ms",
];

/// One (VM, window) row.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    pub vm: &'a str,
    pub pid: u32,
    pub label: &'a str,
    pub window: u64,
    pub start_unix_ms: u64,
    pub duration_ms: u64,
    /// One count per feature, in the writer's column order.
    pub counts: &'a [u64],
}

enum Sink {
    Plain(BufWriter<File>),
    Gz(GzEncoder<BufWriter<File>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gz(w) => w.write(buf),
        }
    }

    /// For gzip this is a sync flush: everything written so far can be
    /// decompressed even if the process dies before the trailer.
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gz(w) => w.flush(),
        }
    }
}

/// Streams rows to a dataset file, flushing at every window so a crash
/// loses at most the open window.
pub struct DatasetWriter {
    path: PathBuf,
    csv: Option<csv::Writer<Sink>>,
    width: usize,
    record: Vec<String>,
}

impl DatasetWriter {
    /// Creates `path` (gzip when it ends in `.gz`) and writes the header.
    /// An existing file is replaced only when `overwrite` is set.
    pub fn create(path: &Path, features: &[String], overwrite: bool) -> Result<Self> {
        let mut opts = OpenOptions::new();
        opts.write(true);
        if overwrite {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let file = opts.open(path).map_err(|source| {
            let what = if source.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{} already exists (pass --force to replace it)",
                    path.display()
                )
            } else {
                format!("cannot create {}", path.display())
            };
            Error::io(what, source)
        })?;
        let buf = BufWriter::new(file);
        let sink = if path.extension().is_some_and(|e| e == "gz") {
            Sink::Gz(GzEncoder::new(buf, Compression::default()))
        } else {
            Sink::Plain(buf)
        };
        let mut csv = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(sink);
        let header = LEADING
            .iter()
            .copied()
            .chain(features.iter().map(String::as_str));
        csv.write_record(header).map_err(|e| csv_err(path, e))?;
        let mut w = Self {
            path: path.to_owned(),
            csv: Some(csv),
            width: features.len(),
            record: Vec::with_capacity(LEADING.len() + features.len()),
        };
        w.flush()?;
        Ok(w)
    }

    /// Appends one row; the caller flushes once the window's rows are written.
    pub fn write_row(&mut self, row: &Row<'_>) -> Result<()> {
        if row.counts.len() != self.width {
            return Err(Error::Invalid(format!(
                "row has {} counts but {} has {} feature columns",
                row.counts.len(),
                self.path.display(),
                self.width
            )));
        }
        self.record.clear();
        self.record.extend([
            row.vm.to_string(),
            row.pid.to_string(),
            row.label.to_string(),
            row.window.to_string(),
            row.start_unix_ms.to_string(),
            row.duration_ms.to_string(),
        ]);
        self.record.extend(row.counts.iter().map(u64::to_string));
        let csv = self.csv.as_mut().expect("writer is open until finish");
        csv.write_record(&self.record)
            .map_err(|e| csv_err(&self.path, e))
    }

    /// Pushes everything written so far to the file.
    pub fn flush(&mut self) -> Result<()> {
        let csv = self.csv.as_mut().expect("writer is open until finish");
        csv.flush()
            .map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e))
    }

    /// Flushes and closes the file (writes the gzip trailer).
    pub fn finish(mut self) -> Result<()> {
        self.close()
    }

    fn close(&mut self) -> Result<()> {
        let Some(csv) = self.csv.take() else {
            return Ok(());
        };
        let what = || format!("cannot write {}", self.path.display());
        let sink = csv
            .into_inner()
            .map_err(|e| Error::io(what(), e.into_error()))?;
        let buf = match sink {
            Sink::Plain(w) => w,
            Sink::Gz(gz) => gz.finish().map_err(|e| Error::io(what(), e))?,
        };
        let file = buf
            .into_inner()
            .map_err(|e| Error::io(what(), e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(what(), e))
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!("{e}");
        }
    }
}

fn csv_err(path: &Path, e: csv::Error) -> Error {
    Error::Invalid(format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn row(counts: &[u64]) -> Row<'_> {
        Row {
            vm: "web,1",
            pid: 42,
            label: "idle",
            window: 3,
            start_unix_ms: 1000,
            duration_ms: 2000,
            counts,
        }
    }

    #[test]
    fn writes_header_and_rows_plain_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let feats = vec!["qemu:a".to_string(), "qemu:b".to_string()];
        for name in ["d.csv", "d.csv.gz"] {
            let path = dir.path().join(name);
            let mut w = DatasetWriter::create(&path, &feats, false).unwrap();
            w.write_row(&row(&[5, 0])).unwrap();
            w.flush().unwrap();
            w.finish().unwrap();
            let mut text = String::new();
            let f = File::open(&path).unwrap();
            if name.ends_with(".gz") {
                flate2::read::GzDecoder::new(f)
                    .read_to_string(&mut text)
                    .unwrap();
            } else {
                std::io::BufReader::new(f)
                    .read_to_string(&mut text)
                    .unwrap();
            }
            assert_eq!(
                text,
                "vm,pid,label,window,start_unix_ms,duration_ms,qemu:a,qemu:b\n\"web,1\",42,idle,3,1000,2000,5,0\n"
            );
        }
    }

    #[test]
    fn refuses_to_replace_without_overwrite_and_checks_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        let feats = vec!["qemu:a".to_string()];
        let mut w = DatasetWriter::create(&path, &feats, false).unwrap();
        assert!(w.write_row(&row(&[1, 2])).is_err());
        drop(w);
        let err = DatasetWriter::create(&path, &feats, false).err().unwrap();
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(DatasetWriter::create(&path, &feats, true).is_ok());
    }

    #[test]
    fn gz_rows_survive_without_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv.gz");
        let feats = vec!["qemu:a".to_string()];
        let mut w = DatasetWriter::create(&path, &feats, false).unwrap();
        w.write_row(&row(&[7])).unwrap();
        w.flush().unwrap();
        // Simulate a crash: the file is read before finish() writes the trailer.
        let mut text = String::new();
        let _ = flate2::read::GzDecoder::new(File::open(&path).unwrap()).read_to_string(&mut text);
        assert!(text.contains(",7\n"), "{text:?}");
        std::mem::forget(w);
    }
}
