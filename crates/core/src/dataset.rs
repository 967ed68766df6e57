//! Dataset files (DESIGN.md): CSV, optionally gzip-compressed, one row per
//! (VM, window) with the leading columns below and one column per feature.
//! Files this vmwatch writes also carry the QEMU each row was counted on
//! ([`PROVENANCE`]); files without those columns read as before.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use csv::{ByteRecord, StringRecord};
use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use ndarray::Array2;

use crate::atomic::{self, Output};
use crate::error::{shown, Error, Result};
use crate::limits::{MAX_FEATURE_COLUMNS, MAX_LINE_BYTES};
use crate::qemu::QemuBuild;

/// The leading columns, in order.
pub const LEADING: [&str; 6] = [
    "vm",
    "pid",
    "label",
    "window",
    "start_unix_ms",
    "duration_ms",
];

/// The provenance columns: the build id and version of the QEMU binary
/// the row's VM ran (empty when unknown). The writer puts them right after
/// [`LEADING`]; readers find them by name, so files without them (older
/// vmwatch) read as before, every row of unknown provenance. They are not
/// features.
pub const PROVENANCE: [&str; 2] = ["qemu_build_id", "qemu_version"];

/// The column that marks estimated counts (the cost governor's
/// duty-cycled probes): `feature=fraction` pairs separated by `;`, e.g.
/// `qemu:exec_tb=0.0625;qemu:translate_block=0.5`, where the fraction is
/// the share of the window during which the probe was counted and the
/// feature's value is its count divided by that fraction. Empty: every
/// count of the row is exact. Written right after [`PROVENANCE`]; files
/// without it (older vmwatch) have exact counts only. Not a feature.
pub const SAMPLED: &str = "sampled";

/// Fractions in the [`SAMPLED`] column keep this many significant digits.
const FRACTION_DIGITS: i32 = 4;

/// One (VM, window) row.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    pub vm: &'a str,
    pub pid: u32,
    pub label: &'a str,
    pub window: u64,
    pub start_unix_ms: u64,
    pub duration_ms: u64,
    /// The QEMU the VM ran, when known.
    pub qemu: Option<&'a QemuBuild>,
    /// One count per feature, in the writer's column order.
    pub counts: &'a [u64],
    /// Estimated counts: (column, fraction of the window counted), see
    /// [`SAMPLED`]; empty when every count is exact.
    pub sampled: &'a [(usize, f64)],
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
    /// Which extra columns the file has (one of an older vmwatch, appended
    /// to, may lack them).
    extra: Extra,
    /// The feature names, for the [`SAMPLED`] column.
    features: Vec<String>,
    record: Vec<String>,
    rows: u64,
    /// Replacing an existing file: the temporary file that takes its name
    /// once rows are flushed. Until then the old file stays untouched; if
    /// none are, the temporary file is removed.
    pending: Option<tempfile::TempPath>,
    /// Writing through a device or FIFO: nothing to fsync.
    stream: bool,
}

impl DatasetWriter {
    /// Checks, before anything slow (attaching), that [`DatasetWriter::create`]
    /// may write `path`: what it refuses, it refuses now.
    pub fn check(path: &Path, overwrite: bool) -> Result<()> {
        match atomic::classify(path)? {
            Output::Regular if !overwrite => Err(already_exists(path)),
            _ => Ok(()),
        }
    }

    /// Creates `path` (gzip when it ends in `.gz`) and writes the header
    /// (the [`LEADING`] and [`PROVENANCE`] columns, then `features`).
    /// An existing file is replaced only when `overwrite` is set, and only
    /// once the first rows are flushed. A character device or FIFO is
    /// written through; other file types and symbolic links are refused
    /// (see [`atomic::classify`]).
    pub fn create(path: &Path, features: &[String], overwrite: bool) -> Result<Self> {
        let (file, pending, stream) = match atomic::classify(path)? {
            Output::Stream => (atomic::open_stream(path)?, None, true),
            Output::Regular if overwrite => {
                let (file, tmp) = atomic::temp_beside(path)?.into_parts();
                (file, Some(tmp), false)
            }
            Output::Regular => return Err(already_exists(path)),
            // O_EXCL: never follows a link planted since the check, and
            // the header appears at the path at once.
            Output::New => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|source| {
                        if source.kind() == io::ErrorKind::AlreadyExists && !overwrite {
                            already_exists(path)
                        } else {
                            Error::io(format!("cannot create {}", path.display()), source)
                        }
                    })?;
                (file, None, false)
            }
        };
        let buf = BufWriter::new(file);
        let sink = if path.extension().is_some_and(|e| e == "gz") {
            Sink::Gz(GzEncoder::new(buf, Compression::default()))
        } else {
            Sink::Plain(buf)
        };
        let mut csv = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(sink);
        csv.write_record(header(features, Extra::Sampled))
            .map_err(|e| csv_err(path, e))?;
        let mut w = Self {
            path: path.to_owned(),
            csv: Some(csv),
            width: features.len(),
            extra: Extra::Sampled,
            features: features.to_vec(),
            record: Vec::with_capacity(LEADING.len() + PROVENANCE.len() + 1 + features.len()),
            rows: 0,
            pending,
            stream,
        };
        w.flush()?;
        Ok(w)
    }

    /// Opens the plain CSV dataset `path` to add rows at its end, creating
    /// it with the header when it does not exist. An existing file must have
    /// exactly this header, with or without the [`PROVENANCE`] and
    /// [`SAMPLED`] columns (one an older vmwatch began grows in its own
    /// layout: see [`DatasetWriter::marks_estimates`]); a partial last row
    /// (a crash mid-write) is cut off first, so the next row starts on a
    /// line of its own. A file of an older layout is first rewritten
    /// (atomically) with this vmwatch's columns added, empty: its rows are
    /// kept, and new rows can mark estimated counts. Returns the writer and
    /// the number of complete rows the file already holds.
    pub fn append(path: &Path, features: &[String]) -> Result<(Self, u64)> {
        let (w, rows) = Self::append_as_is(path, features)?;
        if w.extra == Extra::Sampled {
            return Ok((w, rows));
        }
        let old = w.extra;
        drop(w);
        upgrade(path, features, old)?;
        tracing::info!(
            "{}: added the columns of this vmwatch ({}), its {rows} rows kept",
            path.display(),
            if old == Extra::None {
                "provenance and estimates"
            } else {
                "estimates"
            }
        );
        Self::append_as_is(path, features)
    }

    fn append_as_is(path: &Path, features: &[String]) -> Result<(Self, u64)> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;

        if path.extension().is_some_and(|e| e == "gz") {
            return Err(Error::Invalid(format!(
                "cannot append to {}: only plain CSV files grow in place",
                path.display()
            )));
        }
        if atomic::classify(path)? == Output::New {
            return Ok((Self::create(path, features, false)?, 0));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
        // A training set of 300 windows is a few MiB; 1 GiB bounds a wrong path.
        let text = crate::limits::read_file(path, 1 << 30, "a dataset to append to")?;
        let (extra, header) = [Extra::Sampled, Extra::Provenance, Extra::None]
            .into_iter()
            .map(|e| (e, header_line(features, e)))
            .find(|(_, h)| text.starts_with(h.as_bytes()))
            .ok_or_else(|| Error::OtherColumns {
                path: path.to_owned(),
            })?;
        // Everything up to the last newline is complete rows.
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let rows = text[header.len()..keep]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        if keep < text.len() {
            tracing::warn!(
                "{}: cutting a partial last row ({} bytes) before appending",
                path.display(),
                text.len() - keep
            );
            file.set_len(keep as u64)
                .map_err(|e| Error::write(path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| Error::write(path, e))?;
        let csv = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Sink::Plain(BufWriter::new(file)));
        Ok((
            Self {
                path: path.to_owned(),
                csv: Some(csv),
                width: features.len(),
                extra,
                features: features.to_vec(),
                record: Vec::with_capacity(LEADING.len() + PROVENANCE.len() + 1 + features.len()),
                rows: 0,
                pending: None,
                stream: false,
            },
            rows,
        ))
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
        if !row.sampled.is_empty() && self.extra != Extra::Sampled {
            return Err(Error::Invalid(format!(
                "{} has no `{SAMPLED}` column (an older vmwatch began it), so a row with \
                 estimated counts cannot be marked as such",
                self.path.display()
            )));
        }
        if self.extra != Extra::None {
            let q = row.qemu;
            self.record.extend([
                q.and_then(|q| q.build_id.clone()).unwrap_or_default(),
                q.and_then(|q| q.version.clone()).unwrap_or_default(),
            ]);
        }
        if self.extra == Extra::Sampled {
            let mut cell = String::new();
            for &(col, fraction) in row.sampled {
                let name = self.features.get(col).ok_or_else(|| {
                    Error::Invalid(format!(
                        "an estimated count in column {col}, but {} has {} feature columns",
                        self.path.display(),
                        self.width
                    ))
                })?;
                if !(fraction > 0.0 && fraction < 1.0) {
                    return Err(Error::Invalid(format!(
                        "{name}: a sampling fraction must lie between 0 and 1, not {fraction}"
                    )));
                }
                if !cell.is_empty() {
                    cell.push(';');
                }
                cell.push_str(name);
                cell.push('=');
                cell.push_str(&round_significant(fraction, FRACTION_DIGITS).to_string());
            }
            self.record.push(cell);
        }
        self.record.extend(row.counts.iter().map(u64::to_string));
        let csv = self.csv.as_mut().expect("writer is open until finish");
        csv.write_record(&self.record)
            .map_err(|e| csv_err(&self.path, e))?;
        self.rows += 1;
        Ok(())
    }

    /// Pushes everything written so far to the file. The first flush with
    /// rows puts a replacing file in place of the old one.
    pub fn flush(&mut self) -> Result<()> {
        let csv = self.csv.as_mut().expect("writer is open until finish");
        csv.flush().map_err(|e| Error::write(&self.path, e))?;
        if self.rows > 0 {
            if let Some(tmp) = self.pending.take() {
                let file = match csv.get_ref() {
                    Sink::Plain(w) => w.get_ref(),
                    Sink::Gz(gz) => gz.get_ref().get_ref(),
                };
                replace(&self.path, file, tmp)?;
            }
        }
        Ok(())
    }

    /// Whether rows can mark estimated counts: false for a file an older
    /// vmwatch began, which has no [`SAMPLED`] column.
    pub fn marks_estimates(&self) -> bool {
        self.extra == Extra::Sampled
    }

    /// Whether the file at the path is still the old one (replacing, and no
    /// rows flushed yet): finishing now leaves it as it was.
    pub fn keeps_old_file(&self) -> bool {
        self.pending.is_some()
    }

    /// Flushes and closes the file (writes the gzip trailer). Replacing an
    /// old file, it takes the old one's place if any row was written;
    /// otherwise the old file stays.
    pub fn finish(mut self) -> Result<()> {
        self.close(true)
    }

    /// `commit`: finishing normally; dropped (an error, mid-window), a
    /// pending replacement is abandoned.
    fn close(&mut self, commit: bool) -> Result<()> {
        let Some(csv) = self.csv.take() else {
            return Ok(());
        };
        if self.pending.is_some() && !(commit && self.rows > 0) {
            // The old file stays; the temporary one is removed.
            drop(csv);
            self.pending = None;
            return Ok(());
        }
        let what = |e| Error::write(&self.path, e);
        let sink = csv.into_inner().map_err(|e| what(e.into_error()))?;
        let buf = match sink {
            Sink::Plain(w) => w,
            Sink::Gz(gz) => gz.finish().map_err(what)?,
        };
        let file = buf.into_inner().map_err(|e| what(e.into_error()))?;
        if let Some(tmp) = self.pending.take() {
            return replace(&self.path, &file, tmp);
        }
        if self.stream {
            return Ok(());
        }
        file.sync_all().map_err(what)
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        if let Err(e) = self.close(false) {
            tracing::error!("{}", crate::error::chain(&e));
        }
    }
}

/// The columns between the leading ones and the features, by vmwatch
/// version: none, [`PROVENANCE`], or [`PROVENANCE`] and [`SAMPLED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Provenance,
    Sampled,
}

/// The header's fields for `features` with the `extra` columns.
fn header(features: &[String], extra: Extra) -> impl Iterator<Item = &str> {
    let extra: &[&str] = match extra {
        Extra::None => &[],
        Extra::Provenance => &PROVENANCE,
        Extra::Sampled => &[PROVENANCE[0], PROVENANCE[1], SAMPLED],
    };
    LEADING
        .iter()
        .chain(extra)
        .copied()
        .chain(features.iter().map(String::as_str))
}

/// The [`SAMPLED`] cell of a row: `feature=fraction` pairs, `;`-separated.
fn parse_sampled(
    cell: &str,
    features: &std::collections::HashMap<&str, usize>,
) -> std::result::Result<Vec<(usize, f32)>, String> {
    let mut out: Vec<(usize, f32)> = Vec::new();
    for pair in cell.split(';').filter(|p| !p.is_empty()) {
        let (name, fraction) = pair
            .rsplit_once('=')
            .ok_or_else(|| format!("`{}` is not feature=fraction", shown(pair)))?;
        let &i = features
            .get(name)
            .ok_or_else(|| format!("`{}` is not a feature of the file", shown(name)))?;
        let f: f32 = fraction
            .parse()
            .ok()
            .filter(|f: &f32| *f > 0.0 && *f < 1.0)
            .ok_or_else(|| {
                format!(
                    "`{}` for {} is not a fraction between 0 and 1",
                    shown(fraction),
                    shown(name)
                )
            })?;
        if out.iter().any(|s| s.0 == i) {
            return Err(format!("{} appears twice", shown(name)));
        }
        out.push((i, f));
    }
    Ok(out)
}

/// Rewrites the plain dataset `path` of layout `old` (header and complete
/// rows as [`DatasetWriter::append_as_is`] accepted them) with the columns
/// of [`Extra::Sampled`], empty in the old rows.
fn upgrade(path: &Path, features: &[String], old: Extra) -> Result<()> {
    let text = crate::limits::read_file(path, 1 << 30, "a dataset to append to")?;
    let missing = match old {
        Extra::None => 3,
        Extra::Provenance => 1,
        Extra::Sampled => return Ok(()),
    };
    let at = LEADING.len() + 3 - missing;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&text[..]);
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::with_capacity(text.len() + text.len() / 8));
    writer
        .write_record(header(features, Extra::Sampled))
        .map_err(|e| csv_err(path, e))?;
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for (i, rec) in reader.byte_records().enumerate() {
        let rec = rec.map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        if i == 0 {
            continue;
        }
        fields.clear();
        fields.extend(rec.iter().take(at).map(<[u8]>::to_vec));
        fields.extend((0..missing).map(|_| Vec::new()));
        fields.extend(rec.iter().skip(at).map(<[u8]>::to_vec));
        writer.write_record(&fields).map_err(|e| csv_err(path, e))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| Error::write(path, e.into_error()))?;
    atomic::write(path, &bytes)
}

/// `x` rounded to `digits` significant digits (a short, exact-enough text).
fn round_significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// The header line the writer writes for `features`.
fn header_line(features: &[String], extra: Extra) -> String {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = w.write_record(header(features, extra));
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Renames the temporary file `tmp` (open as `file`) over `path`, its rows
/// on disk first.
fn replace(path: &Path, file: &File, tmp: tempfile::TempPath) -> Result<()> {
    let what = || format!("cannot replace {}", path.display());
    file.sync_all().map_err(|e| Error::io(what(), e))?;
    tmp.persist(path).map_err(|e| Error::io(what(), e.error))
}

fn already_exists(path: &Path) -> Error {
    Error::Invalid(format!(
        "{} already exists (pass --force to replace it)",
        path.display()
    ))
}

fn csv_err(path: &Path, e: csv::Error) -> Error {
    let msg = e.to_string();
    match e.into_kind() {
        // Keeps the io::Error: the binary tells a closed pipe apart.
        csv::ErrorKind::Io(io) => Error::write(path, io),
        _ => Error::Invalid(format!("cannot write {}: {msg}", path.display())),
    }
}

/// The first bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Marks the errors of the reader a dataset comes from: they stay fatal,
/// while the gzip decoder's own errors are judged (cut short or damaged).
struct Tagged<R>(R);

#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

impl<R: Read> Read for Tagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceError(e)))
    }
}

fn is_source_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<SourceError>())
}

/// The reader's own error inside a [`SourceError`].
fn untag(e: io::Error) -> io::Error {
    if !is_source_error(&e) {
        return e;
    }
    let kind = e.kind();
    match e.into_inner().map(|b| b.downcast::<SourceError>()) {
        Some(Ok(s)) => s.0,
        _ => kind.into(),
    }
}

fn read_err(name: &str, e: io::Error) -> Error {
    Error::Read {
        path: PathBuf::from(name),
        source: untag(e),
    }
}

fn too_many_columns() -> String {
    format!("more than {MAX_FEATURE_COLUMNS} feature columns, the most a dataset may have")
}

/// The raw bytes of a dataset, buffered.
type Raw<R> = BufReader<Tagged<R>>;

enum Decoded<R: Read> {
    Plain(Raw<R>),
    // bufread's decoder reads through our BufReader, so after an error
    // what is left of the input is visible.
    Gz(Box<MultiGzDecoder<BufReader<ZeroTail<Raw<R>>>>>),
}

/// A run of at least this many zero bytes at the end of a gzip file is not
/// data (a valid stream ends in a few at most) but what a power loss can
/// leave after the last write.
const ZERO_TAIL: u64 = 32;

/// Passes compressed bytes through but holds back runs of zero bytes until
/// a non-zero byte follows, and drops a final run of [`ZERO_TAIL`] or more:
/// the decoder then sees the stream cut where the data ends. (Fed the
/// zeros, it would fail on them and discard what it decoded in that call.)
struct ZeroTail<R> {
    inner: R,
    /// Zeros read but not passed on yet.
    held: u64,
    /// Whether the held zeros are data (something follows them).
    release: bool,
    /// Zeros dropped at the end.
    dropped: u64,
}

impl<R: BufRead> Read for ZeroTail<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.held > 0 && self.release {
                let n = out
                    .len()
                    .min(usize::try_from(self.held).unwrap_or(usize::MAX));
                out[..n].fill(0);
                self.held -= n as u64;
                self.release = self.held > 0;
                return Ok(n);
            }
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                if self.held >= ZERO_TAIL {
                    self.dropped = self.held;
                    self.held = 0;
                }
                if self.held == 0 {
                    return Ok(0);
                }
                self.release = true;
                continue;
            }
            let zeros = chunk.iter().take_while(|&&b| b == 0).count();
            if zeros > 0 {
                self.held += zeros as u64;
                self.inner.consume(zeros);
                continue;
            }
            if self.held > 0 {
                self.release = true;
                continue;
            }
            // Zeros inside the chunk are data; only those at its end may be
            // the start of a tail.
            let n = chunk
                .iter()
                .rposition(|&b| b != 0)
                .map_or(chunk.len(), |i| i + 1)
                .min(out.len());
            out[..n].copy_from_slice(&chunk[..n]);
            self.inner.consume(n);
            return Ok(n);
        }
    }
}

/// The decompressed text of a dataset, watched as it streams to the CSV
/// parser: a line's bounds are enforced before the parser buffers it, and
/// the last byte tells whether the last line is complete.
struct Input<R: Read> {
    decoded: Decoded<R>,
    name: String,
    /// Bytes so far, and the last one.
    bytes: u64,
    last: Option<u8>,
    /// Complete lines so far; bytes and commas since the last newline.
    lines: u64,
    line_bytes: u64,
    line_commas: usize,
    /// Why a gzip stream ended early but readably.
    cut: Option<String>,
    /// The sentence to fail with, once reading stopped on a limit or on
    /// damaged data.
    fatal: Option<String>,
}

impl<R: Read> Input<R> {
    fn new(name: &str, decoded: Decoded<R>) -> Self {
        Self {
            decoded,
            name: name.to_string(),
            bytes: 0,
            last: None,
            lines: 0,
            line_bytes: 0,
            line_commas: 0,
            cut: None,
            fatal: None,
        }
    }

    /// Whether the input's last line lacks its line terminator (the
    /// writer ends every row with one).
    fn ends_mid_line(&self) -> bool {
        self.last.is_some_and(|b| b != b'\n' && b != b'\r')
    }

    fn fail(&mut self, msg: String) -> io::Error {
        let e = io::Error::other(msg.clone());
        self.fatal = Some(msg);
        e
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.decoded {
            Decoded::Plain(r) => r.read(buf)?,
            Decoded::Gz(_) if self.cut.is_some() => 0,
            Decoded::Gz(gz) => match gz.read(buf) {
                Ok(n) => n,
                Err(e) if is_source_error(&e) => return Err(e),
                Err(e) => {
                    // Cut short (a crash, a full disk): the decoder ran out
                    // of input. The input ends at the last byte decoded.
                    let rest = gz.get_mut().fill_buf()?;
                    if e.kind() == io::ErrorKind::UnexpectedEof && rest.is_empty() {
                        let zeros = gz.get_ref().get_ref().dropped;
                        self.cut = Some(if zeros == 0 {
                            "the gzip stream has no trailer".to_string()
                        } else {
                            format!("the gzip stream has no trailer and ends in {zeros} zero bytes")
                        });
                        0
                    } else {
                        let msg = format!(
                            "{} line {}: the gzip data is damaged ({e})",
                            self.name,
                            self.lines + 1
                        );
                        return Err(self.fail(msg));
                    }
                }
            },
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                self.lines += 1;
                self.line_bytes = 0;
                self.line_commas = 0;
                continue;
            }
            self.line_bytes += 1;
            if self.line_bytes > MAX_LINE_BYTES {
                let msg = format!(
                    "{} line {}: the line is longer than {}, the most a dataset line may be",
                    self.name,
                    self.lines + 1,
                    crate::limits::mib(MAX_LINE_BYTES)
                );
                return Err(self.fail(msg));
            }
            if b == b',' {
                self.line_commas += 1;
                // Commas in quoted fields count too: a bound, not a count.
                if self.line_commas >= LEADING.len() + PROVENANCE.len() + MAX_FEATURE_COLUMNS {
                    let msg = format!(
                        "{} line {}: {}",
                        self.name,
                        self.lines + 1,
                        too_many_columns()
                    );
                    return Err(self.fail(msg));
                }
            }
        }
        if n > 0 {
            self.bytes += n as u64;
            self.last = Some(buf[n - 1]);
        }
        Ok(n)
    }
}

/// Reads the next record into `rec`; false at the end of the input.
fn next_record<R: Read>(
    csv: &mut csv::Reader<Input<R>>,
    rec: &mut ByteRecord,
    name: &str,
) -> Result<bool> {
    csv.read_byte_record(rec).map_err(|e| {
        if let Some(msg) = csv.get_mut().fatal.take() {
            return Error::Invalid(msg);
        }
        let msg = e.to_string();
        match e.into_kind() {
            csv::ErrorKind::Io(io) => read_err(name, io),
            _ => Error::Invalid(format!("{name}: {msg}")),
        }
    })
}

/// Identity of one row (the leading columns).
#[derive(Debug, Clone, PartialEq)]
pub struct RowKey {
    pub vm: String,
    pub pid: u32,
    pub label: String,
    pub window: u64,
    pub start_unix_ms: u64,
    pub duration_ms: u64,
    /// The QEMU the row was counted on (the [`PROVENANCE`] columns);
    /// `None` when the file does not say.
    pub qemu: Option<Arc<QemuBuild>>,
    /// The row's estimated counts (the [`SAMPLED`] column): (feature index
    /// in the table, fraction of the window counted). Empty: all exact.
    pub sampled: Vec<(usize, f32)>,
}

/// A dataset in memory: one row per (VM, window), one column per feature.
#[derive(Debug, Clone)]
pub struct Table {
    pub features: Vec<String>,
    pub keys: Vec<RowKey>,
    /// Counts, rows × features.
    pub x: Array2<f64>,
}

impl Table {
    /// Reads a dataset file (CSV, or gzip-compressed CSV: detected by its
    /// magic bytes). Errors name the file, line and column. A file cut short
    /// (a crash, a full disk) is read up to its last complete row, with a
    /// warning that says what was dropped.
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_reader(&path.display().to_string(), file)
    }

    /// Reads a dataset from `reader`; `name` names it in messages. See
    /// [`Table::read`].
    pub fn from_reader(name: &str, reader: impl Read) -> Result<Self> {
        let (table, cut) = Self::parse(name, reader)?;
        if let Some(cut) = cut {
            tracing::warn!("{cut}");
        }
        Ok(table)
    }

    /// The table and, for input that was cut short, the sentence that says
    /// what was dropped.
    fn parse(name: &str, reader: impl Read) -> Result<(Self, Option<String>)> {
        let mut raw = BufReader::new(Tagged(reader));
        let gz = raw
            .fill_buf()
            .map_err(|e| read_err(name, e))?
            .starts_with(&GZIP_MAGIC);
        let decoded = if gz {
            Decoded::Gz(Box::new(MultiGzDecoder::new(BufReader::new(ZeroTail {
                inner: raw,
                held: 0,
                release: false,
                dropped: 0,
            }))))
        } else {
            Decoded::Plain(raw)
        };
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(Input::new(name, decoded));
        let bad = |line: u64, reason: String| Error::Dataset {
            path: name.to_string(),
            line,
            reason,
        };
        // Each record is parsed only once the next one is read: the last
        // one is complete only if the input ends with its newline.
        let mut header = ByteRecord::new();
        let mut next = ByteRecord::new();
        if !next_record(&mut csv, &mut header, name)? {
            return Err(Error::Invalid(if csv.get_ref().bytes == 0 {
                format!("{name} is empty")
            } else {
                format!("{name} ends in the middle of its header line (cut short before any row)")
            }));
        }
        let mut more = next_record(&mut csv, &mut next, name)?;
        if !more && csv.get_ref().ends_mid_line() {
            return Err(Error::Invalid(format!(
                "{name} ends in the middle of its header line (cut short before any row)"
            )));
        }
        let header = StringRecord::from_byte_record(header)
            .map_err(|e| bad(1, format!("the header is not UTF-8 text ({e})")))?;
        for (i, want) in LEADING.iter().enumerate() {
            if header.get(i) != Some(want) {
                return Err(bad(
                    1,
                    format!(
                        "column {} must be `{want}` (a vmwatch dataset starts with {})",
                        i + 1,
                        LEADING.join(",")
                    ),
                ));
            }
        }
        // Provenance columns by name, anywhere after the leading ones.
        let prov_col = |name: &str| {
            header
                .iter()
                .skip(LEADING.len())
                .position(|h| h == name)
                .map(|i| i + LEADING.len())
        };
        let (build_col, version_col) = (prov_col(PROVENANCE[0]), prov_col(PROVENANCE[1]));
        let sampled_col = prov_col(SAMPLED);
        let feature_cols: Vec<usize> = (LEADING.len()..header.len())
            .filter(|&c| ![build_col, version_col, sampled_col].contains(&Some(c)))
            .collect();
        let features: Vec<String> = feature_cols
            .iter()
            .map(|&c| header[c].to_string())
            .collect();
        if features.len() > MAX_FEATURE_COLUMNS {
            return Err(bad(1, too_many_columns()));
        }
        let mut seen = std::collections::HashSet::new();
        let names = header.iter().skip(LEADING.len());
        if let Some(dup) = names.clone().find(|f| !seen.insert(*f)) {
            let what = if PROVENANCE.contains(&dup) || dup == SAMPLED {
                "column"
            } else {
                "feature"
            };
            return Err(bad(1, format!("{what} `{}` appears twice", shown(dup))));
        }
        let width = header.len();
        let feature_index: std::collections::HashMap<&str, usize> = features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        // Rows of one build share its record.
        let mut builds: Vec<Arc<QemuBuild>> = Vec::new();
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut rec = ByteRecord::new();
        let mut line = 1u64;
        let mut partial = false;
        while more {
            line += 1;
            std::mem::swap(&mut rec, &mut next);
            more = next_record(&mut csv, &mut next, name)?;
            if !more && csv.get_ref().ends_mid_line() {
                partial = true;
                break;
            }
            if rec.len() != width {
                return Err(bad(
                    line,
                    format!("{} fields, but the header has {width}", rec.len()),
                ));
            }
            let text = |col: usize| -> Result<&str> {
                std::str::from_utf8(&rec[col]).map_err(|_| {
                    bad(
                        line,
                        format!(
                            "column {} (`{}`) is not UTF-8 text",
                            col + 1,
                            shown(&header[col])
                        ),
                    )
                })
            };
            let num = |col: usize| -> Result<u64> {
                let field = text(col)?;
                field.parse::<u64>().map_err(|_| {
                    bad(
                        line,
                        format!(
                            "column {} (`{}`): `{}` is not a non-negative integer",
                            col + 1,
                            shown(&header[col]),
                            shown(field),
                        ),
                    )
                })
            };
            let field = |col: Option<usize>| -> Result<Option<String>> {
                let Some(col) = col else { return Ok(None) };
                let t = text(col)?;
                Ok((!t.is_empty()).then(|| t.to_string()))
            };
            let build = QemuBuild {
                build_id: field(build_col)?,
                version: field(version_col)?,
            };
            let qemu = if build.is_unknown() {
                None
            } else {
                build.validate().map_err(|reason| bad(line, reason))?;
                Some(match builds.iter().find(|b| ***b == build) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(build);
                        builds.push(b.clone());
                        b
                    }
                })
            };
            let sampled = match sampled_col {
                Some(col) => parse_sampled(text(col)?, &feature_index)
                    .map_err(|reason| bad(line, format!("column `{SAMPLED}`: {reason}")))?,
                None => Vec::new(),
            };
            keys.push(RowKey {
                vm: text(0)?.to_string(),
                pid: u32::try_from(num(1)?).map_err(|_| bad(line, "pid out of range".into()))?,
                label: text(2)?.to_string(),
                window: num(3)?,
                start_unix_ms: num(4)?,
                duration_ms: num(5)?,
                qemu,
                sampled,
            });
            for &col in &feature_cols {
                values.push(num(col)? as f64);
            }
        }
        let x = Array2::from_shape_vec((keys.len(), features.len()), values)
            .expect("row widths were checked");
        let rows = keys.len();
        let dropped = if partial {
            ", dropped the partial last one"
        } else {
            ""
        };
        let cut = match (csv.get_ref().cut.as_deref(), partial) {
            (None, false) => None,
            (None, true) => Some(format!(
                "{name} ends in the middle of a row (the recording was cut short): read {rows} \
                 complete rows{dropped}"
            )),
            (Some(why), _) => Some(format!(
                "{name}: {why} (the recording was cut short): read {rows} complete rows{dropped}"
            )),
        };
        Ok((Self { features, keys, x }, cut))
    }

    /// Reads several files into one table: columns are the union (in order
    /// of first appearance), a column missing from a file is zeros there.
    pub fn read_all(paths: &[PathBuf]) -> Result<Self> {
        let tables = paths
            .iter()
            .map(|p| Self::read(p))
            .collect::<Result<Vec<_>>>()?;
        let mut features: Vec<String> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for t in &tables {
            for f in &t.features {
                if !index.contains_key(f) {
                    index.insert(f.clone(), features.len());
                    features.push(f.clone());
                }
            }
        }
        let rows: usize = tables.iter().map(Table::len).sum();
        let mut x = Array2::zeros((rows, features.len()));
        let mut keys = Vec::with_capacity(rows);
        let mut r = 0;
        for t in tables {
            let cols: Vec<usize> = t.features.iter().map(|f| index[f]).collect();
            for (i, mut key) in t.keys.into_iter().enumerate() {
                for (j, &c) in cols.iter().enumerate() {
                    x[[r, c]] = t.x[[i, j]];
                }
                for s in &mut key.sampled {
                    s.0 = cols[s.0];
                }
                keys.push(key);
                r += 1;
            }
        }
        Ok(Self { features, keys, x })
    }

    /// The counts of `features`, in that order; a feature this table lacks
    /// is all zeros.
    pub fn project(&self, features: &[String]) -> Array2<f64> {
        let projection = crate::features::Projection::new(&self.features, features);
        let mut out = Array2::zeros((self.len(), features.len()));
        for (j, c) in projection.columns().iter().enumerate() {
            if let Some(c) = c {
                out.column_mut(j).assign(&self.x.column(*c));
            }
        }
        out
    }

    /// Mean events per second of each of `features` (0 for one this table
    /// lacks): each row's count over its window's length, averaged over rows.
    pub fn mean_rates(&self, features: &[String]) -> Vec<f64> {
        let counts = self.project(features);
        let secs: Vec<f64> = self
            .keys
            .iter()
            .map(|k| (k.duration_ms.max(1)) as f64 / 1000.0)
            .collect();
        counts
            .axis_iter(ndarray::Axis(1))
            .map(|col| {
                let sum: f64 = col.iter().zip(&secs).map(|(c, s)| c / s).sum();
                sum / self.len().max(1) as f64
            })
            .collect()
    }

    /// Names of the features of `tables` that are nonzero in some row and
    /// come from one of `sources` (empty: any), first table's first.
    pub fn nonzero_features(tables: &[&Table], sources: &[crate::features::Source]) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for t in tables {
            for (j, f) in t.features.iter().enumerate() {
                if !seen.contains(f.as_str())
                    && crate::features::Source::any_of(sources, f)
                    && t.x.column(j).iter().any(|&v| v != 0.0)
                {
                    seen.insert(f.as_str());
                    out.push(f.clone());
                }
            }
        }
        out
    }

    /// The scenario this table records: its label when every row has the
    /// same nonempty one, else the name of the file it was read from
    /// without `.csv`/`.csv.gz`.
    pub fn scenario_name(&self, path: &Path) -> String {
        if let Some(first) = self.keys.first() {
            if !first.label.is_empty() && self.keys.iter().all(|k| k.label == first.label) {
                return first.label.clone();
            }
        }
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for ext in [".csv.gz", ".csv", ".gz"] {
            if let Some(s) = name.strip_suffix(ext) {
                if !s.is_empty() {
                    return s.to_string();
                }
            }
        }
        name
    }

    /// The QEMU builds the rows were counted on, each once, in order of
    /// first appearance (rows of unknown provenance add none).
    pub fn qemu_builds(&self) -> Vec<QemuBuild> {
        crate::qemu::distinct(self.keys.iter().filter_map(|k| k.qemu.as_deref()))
    }

    /// The probes the recording tracked for `seq:` transitions: those its
    /// `seq:` columns name, in first-named order (a recording lists every
    /// column it counted, zero or not, so this is its tracked set).
    pub fn tracked(&self) -> Vec<String> {
        crate::features::named_probes(&self.features)
    }

    /// Which of `features` were estimated in some rows (the [`SAMPLED`]
    /// column): the share of rows and the mean fraction, in `features`'
    /// order.
    pub fn estimated(&self, features: &[String]) -> Vec<crate::model::Estimated> {
        let rows = self.len().max(1) as f64;
        features
            .iter()
            .filter_map(|f| {
                let i = self.features.iter().position(|g| g == f)?;
                let fractions: Vec<f64> = self
                    .keys
                    .iter()
                    .filter_map(|k| k.sampled.iter().find(|s| s.0 == i))
                    .map(|s| f64::from(s.1))
                    .collect();
                (!fractions.is_empty()).then(|| crate::model::Estimated {
                    feature: f.clone(),
                    windows: fractions.len() as f64 / rows,
                    mean_fraction: fractions.iter().sum::<f64>() / fractions.len() as f64,
                })
            })
            .collect()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorMessage as _;
    use std::io::Read;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const HEAD: &str = "vm,pid,label,window,start_unix_ms,duration_ms";

    #[test]
    fn reads_aligns_and_projects() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a.csv",
            &format!("{HEAD},qemu:a,qemu:b\nv,1,idle,0,10,2000,3,4\n"),
        );
        let b = write(
            dir.path(),
            "b.csv",
            &format!("{HEAD},qemu:c,qemu:a\nw,2,web,0,10,2000,7,8\n"),
        );
        let t = Table::read_all(&[a, b]).unwrap();
        assert_eq!(t.features, ["qemu:a", "qemu:b", "qemu:c"]);
        assert_eq!(t.x.row(0).to_vec(), [3.0, 4.0, 0.0]);
        assert_eq!(t.x.row(1).to_vec(), [8.0, 0.0, 7.0]);
        assert_eq!(t.keys[1].label, "web");
        let p = t.project(&["qemu:c".into(), "qemu:zzz".into()]);
        assert_eq!(p.row(1).to_vec(), [7.0, 0.0]);
    }

    #[test]
    fn mean_rates_are_per_second_of_each_window() {
        // 10 hits in 2 s and 30 in 1 s: 5/s and 30/s, mean 17.5/s.
        let text = format!("{HEAD},qemu:a\nv,1,x,0,10,2000,10\nv,1,x,1,2010,1000,30\n");
        let t = Table::from_reader("a.csv", text.as_bytes()).unwrap();
        let r = t.mean_rates(&["qemu:a".into(), "qemu:none".into()]);
        assert_eq!(r, [17.5, 0.0]);
    }

    #[test]
    fn the_tracked_probes_are_those_the_seq_columns_name() {
        let text = format!("{HEAD},qemu:a,seq:b>a,seq:c>c,seq:a>b\nv,1,x,0,10,2000,1,2,3,4\n");
        let t = Table::from_reader("a.csv", text.as_bytes()).unwrap();
        assert_eq!(t.tracked(), ["b", "a", "c"]);
        let text = format!("{HEAD},qemu:a\nv,1,x,0,10,2000,1\n");
        assert!(Table::from_reader("a.csv", text.as_bytes())
            .unwrap()
            .tracked()
            .is_empty());
    }

    #[test]
    fn reads_what_the_writer_wrote_gzipped() {
        let (_dir, path, mut w) = writer("d.csv.gz");
        w.write_row(&row(&[7])).unwrap();
        w.finish().unwrap();
        let t = Table::read(&path).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.keys[0].vm, "web,1");
        assert_eq!(t.x[[0, 0]], 7.0);
    }

    #[test]
    fn malformed_files_name_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("empty.csv", String::new(), "is empty"),
            (
                "head.csv",
                "a,b,c\n1,2,3\n".to_string(),
                "line 1: column 1 must be `vm`",
            ),
            (
                "num.csv",
                format!("{HEAD},qemu:a\nv,1,idle,0,10,2000,x\n"),
                "line 2: column 7 (`qemu:a`): `x` is not",
            ),
            (
                "short.csv",
                format!("{HEAD},qemu:a\nv,1,idle,0,10\n"),
                "line 2: 5 fields",
            ),
            (
                "dup.csv",
                format!("{HEAD},qemu:a,qemu:a\n"),
                "appears twice",
            ),
            // A quoted field's line break is shown escaped: one line.
            (
                "quoted.csv",
                format!("{HEAD},qemu:a\nv,1,idle,0,10,2000,\"1\r\n2\"\n"),
                r"line 2: column 7 (`qemu:a`): `1\r\n2` is not",
            ),
        ];
        for (name, text, want) in cases {
            let p = write(dir.path(), name, &text);
            let err = Table::read(&p).error_message();
            assert!(err.contains(want), "{name}: {err}");
        }
        let err = Table::read(&dir.path().join("missing.csv")).error_message();
        assert!(err.contains("cannot read"), "{err}");
    }

    /// A new dataset `name` of the one feature `qemu:a` in a scratch
    /// directory, being written.
    fn writer(name: &str) -> (tempfile::TempDir, PathBuf, DatasetWriter) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let w = DatasetWriter::create(&path, &["qemu:a".to_string()], false).unwrap();
        (dir, path, w)
    }

    fn row(counts: &[u64]) -> Row<'_> {
        Row {
            vm: "web,1",
            pid: 42,
            label: "idle",
            window: 3,
            start_unix_ms: 1000,
            duration_ms: 2000,
            qemu: None,
            counts,
            sampled: &[],
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
                "vm,pid,label,window,start_unix_ms,duration_ms,qemu_build_id,qemu_version,sampled,\
                 qemu:a,qemu:b\n\"web,1\",42,idle,3,1000,2000,,,,5,0\n"
            );
        }
    }

    #[test]
    fn replaces_only_once_rows_are_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, "old\n").unwrap();
        let feats = vec!["qemu:a".to_string()];
        let entries = || std::fs::read_dir(dir.path()).unwrap().count();
        // No row: the old file stays, the temporary one goes.
        let w = DatasetWriter::create(&path, &feats, true).unwrap();
        assert!(w.keeps_old_file());
        assert_eq!(entries(), 2);
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old\n");
        assert_eq!(entries(), 1);
        // Dropped mid-window (an error): the same.
        let mut w = DatasetWriter::create(&path, &feats, true).unwrap();
        w.write_row(&row(&[1])).unwrap();
        drop(w);
        assert_eq!(std::fs::read(&path).unwrap(), b"old\n");
        assert_eq!(entries(), 1);
        // The first flushed window replaces it.
        let mut w = DatasetWriter::create(&path, &feats, true).unwrap();
        w.write_row(&row(&[1])).unwrap();
        w.flush().unwrap();
        assert!(!w.keeps_old_file());
        assert_eq!(Table::read(&path).unwrap().len(), 1);
        w.write_row(&row(&[2])).unwrap();
        w.finish().unwrap();
        assert_eq!(Table::read(&path).unwrap().len(), 2);
        assert_eq!(entries(), 1);
        // A link is refused, with or without overwrite.
        let link = dir.path().join("l.csv");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        for overwrite in [false, true] {
            let err = DatasetWriter::create(&link, &feats, overwrite)
                .err()
                .unwrap();
            assert!(err.to_string().contains("is a symbolic link"), "{err}");
            let err = DatasetWriter::check(&link, overwrite).unwrap_err();
            assert!(err.to_string().contains("is a symbolic link"), "{err}");
        }
        assert!(DatasetWriter::check(&path, false).is_err());
        assert!(DatasetWriter::check(&path, true).is_ok());
        // A device is written through.
        let mut w = DatasetWriter::create(Path::new("/dev/null"), &feats, false).unwrap();
        w.write_row(&row(&[1])).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn refuses_to_replace_without_overwrite_and_checks_width() {
        let (_dir, path, mut w) = writer("d.csv");
        let feats = vec!["qemu:a".to_string()];
        assert!(w.write_row(&row(&[1, 2])).is_err());
        drop(w);
        let err = DatasetWriter::create(&path, &feats, false).err().unwrap();
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(DatasetWriter::create(&path, &feats, true).is_ok());
    }

    #[test]
    fn a_cut_plain_file_keeps_its_complete_rows() {
        let dir = tempfile::tempdir().unwrap();
        let full = format!("{HEAD},qemu:a\nv,1,x,0,10,2000,3\nv,1,x,1,2010,2000,4\n");
        // Cut inside a number, after two fields, and at the end of the last
        // field but before its newline.
        for cut in ["v,1,x,2,40", "v,1", "v,1,x,2,4010,2000,12"] {
            let p = write(dir.path(), "cut.csv", &format!("{full}{cut}"));
            let t = Table::read(&p).unwrap_or_else(|e| panic!("{cut:?}: {e}"));
            assert_eq!(t.x.column(0).to_vec(), [3.0, 4.0], "{cut:?}");
        }
        // A complete (newline-terminated) malformed row stays fatal.
        let p = write(
            dir.path(),
            "bad.csv",
            &format!("{full}v,1\nv,1,x,2,4010,2000,12\n"),
        );
        let err = Table::read(&p).error_message();
        assert!(err.contains("line 4: 2 fields"), "{err}");
        let p = write(dir.path(), "head.csv", "vm,pid,lab");
        let err = Table::read(&p).error_message();
        assert!(err.contains("in the middle of its header"), "{err}");
    }

    #[test]
    fn a_cut_gzip_file_keeps_its_complete_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv.gz");
        let feats: Vec<String> = (0..20).map(|i| format!("qemu:p{i}")).collect();
        let counts: Vec<u64> = (0..20).map(|i| i * 1000 + 7).collect();
        let want: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
        let mut w = DatasetWriter::create(&path, &feats, false).unwrap();
        let header_len = std::fs::metadata(&path).unwrap().len() as usize;
        for _ in 0..30 {
            w.write_row(&row(&counts)).unwrap();
            w.flush().unwrap();
        }
        // What a SIGKILL leaves: every window flushed, no trailer.
        let flushed = std::fs::read(&path).unwrap();
        w.finish().unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(Table::read(&path).unwrap().len(), 30);

        let cut = dir.path().join("cut.csv.gz");
        let mut last = 0;
        for len in header_len..=whole.len() {
            std::fs::write(&cut, &whole[..len]).unwrap();
            let t = Table::read(&cut).unwrap_or_else(|e| panic!("cut at {len}: {e}"));
            assert!(
                t.len() >= last && t.len() <= 30,
                "cut at {len}: {} rows",
                t.len()
            );
            if !t.is_empty() {
                assert_eq!(t.x.row(t.len() - 1).to_vec(), want, "cut at {len}");
            }
            last = t.len();
        }
        std::fs::write(&cut, &flushed).unwrap();
        assert_eq!(Table::read(&cut).unwrap().len(), 30);
        // A power loss can leave zeros after the last write.
        let mut zeros = flushed.clone();
        zeros.extend([0u8; 4096]);
        std::fs::write(&cut, &zeros).unwrap();
        assert_eq!(Table::read(&cut).unwrap().len(), 30);
    }

    /// `text` gzip-compressed with a sync flush and no trailer, as a
    /// SIGKILLed writer leaves it.
    fn gzip_unfinished(text: &str) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        gz.flush().unwrap();
        gz.get_ref().clone()
    }

    #[test]
    fn says_what_a_cut_input_lost() {
        let whole = format!("{HEAD},qemu:a\nv,1,x,0,10,2000,3\nv,1,x,1,20,2000,4\n");
        let (t, cut) = Table::parse("x.csv", whole.as_bytes()).unwrap();
        assert_eq!((t.len(), cut), (2, None));
        let (t, cut) = Table::parse("x.csv", format!("{whole}v,1,x,2,3").as_bytes()).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            cut.unwrap(),
            "x.csv ends in the middle of a row (the recording was cut short): read 2 complete \
             rows, dropped the partial last one"
        );
        let gz = gzip_unfinished(&whole);
        let (t, cut) = Table::parse("x.csv.gz", &gz[..]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            cut.unwrap(),
            "x.csv.gz: the gzip stream has no trailer (the recording was cut short): read 2 \
             complete rows"
        );
        let gz = gzip_unfinished(&format!("{whole}v,1,x,2,3"));
        let (_, cut) = Table::parse("x.csv.gz", &gz[..]).unwrap();
        assert!(cut
            .unwrap()
            .ends_with("read 2 complete rows, dropped the partial last one"));
        let mut zeros = gzip_unfinished(&whole);
        zeros.extend([0u8; 4096]);
        let (t, cut) = Table::parse("x.csv.gz", &zeros[..]).unwrap();
        assert_eq!(t.len(), 2);
        assert!(cut.unwrap().contains("ends in 4096 zero bytes"));
        // Through the public entry point the report is a warning.
        assert_eq!(Table::from_reader("x.csv.gz", &zeros[..]).unwrap().len(), 2);
    }

    #[test]
    fn damaged_gzip_data_stays_fatal() {
        let whole = format!("{HEAD},qemu:a\nv,1,x,0,10,2000,3\n");
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(whole.as_bytes()).unwrap();
        let mut bytes = gz.finish().unwrap();
        assert_eq!(Table::from_reader("ok.gz", &bytes[..]).unwrap().len(), 1);
        // Garbage after a complete member.
        bytes.extend([b'x'; 100]);
        let err = Table::from_reader("x.gz", &bytes[..]).error_message();
        assert!(
            err.contains("x.gz line 3: the gzip data is damaged"),
            "{err}"
        );
        // A wrong checksum.
        bytes.truncate(bytes.len() - 100);
        let at = bytes.len() - 8;
        bytes[at] ^= 0xff;
        let err = Table::from_reader("x.gz", &bytes[..]).error_message();
        assert!(err.contains("the gzip data is damaged"), "{err}");
    }

    #[test]
    fn zero_tail_drops_only_a_final_run_of_zeros() {
        let pass = |input: Vec<u8>| {
            let mut z = ZeroTail {
                inner: &input[..],
                held: 0,
                release: false,
                dropped: 0,
            };
            let mut out = Vec::new();
            // Small reads: runs cross read boundaries.
            let mut buf = [0u8; 7];
            loop {
                let n = z.read(&mut buf).unwrap();
                if n == 0 {
                    return (out, z.dropped);
                }
                out.extend_from_slice(&buf[..n]);
            }
        };
        let mut data = vec![1u8];
        data.extend([0u8; 100]);
        data.push(2);
        let mut tailed = data.clone();
        tailed.extend([0u8; 40]);
        assert_eq!(pass(tailed), (data.clone(), 40));
        // A few final zeros can be a trailer's: they stay.
        let mut short = data.clone();
        short.extend([0u8; 5]);
        assert_eq!(pass(short.clone()), (short, 0));
        assert_eq!(pass(vec![0u8; 64]), (Vec::new(), 64));
    }

    #[test]
    fn lines_and_columns_are_bounded_while_reading() {
        let err = Table::from_reader("a", std::io::repeat(b'a').take(MAX_LINE_BYTES + 10))
            .error_message();
        assert_eq!(
            err,
            "a line 1: the line is longer than 64 MiB, the most a dataset line may be"
        );
        let wide = format!("{HEAD}\n{}", ",".repeat(MAX_FEATURE_COLUMNS + 10));
        let err = Table::from_reader("w", wide.as_bytes()).error_message();
        assert_eq!(
            err,
            "w line 2: more than 1000000 feature columns, the most a dataset may have"
        );
    }

    #[test]
    fn a_failing_reader_is_a_read_error() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            }
        }
        let err = Table::from_reader("b", Broken).error_message();
        assert!(
            err.starts_with("cannot read b: Input/output error"),
            "{err}"
        );
        // Also from inside the gzip decoder: not taken for a cut stream.
        let gz = gzip_unfinished(&format!("{HEAD}\n"));
        let err = Table::from_reader("g", (&gz[..]).chain(Broken)).error_message();
        assert!(
            err.starts_with("cannot read g: Input/output error"),
            "{err}"
        );
    }

    #[test]
    fn append_grows_a_file_and_cuts_a_partial_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.csv");
        let feats = vec!["qemu:a".to_string(), "qemu:b".to_string()];
        let (mut w, had) = DatasetWriter::append(&path, &feats).unwrap();
        assert_eq!(had, 0);
        w.write_row(&row(&[1, 2])).unwrap();
        w.finish().unwrap();
        // A crash mid-row leaves a partial last line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"\"web,1\",42,idle,4,10").unwrap();
        drop(f);
        let (mut w, had) = DatasetWriter::append(&path, &feats).unwrap();
        assert_eq!(had, 1);
        w.write_row(&row(&[3, 4])).unwrap();
        w.finish().unwrap();
        let t = Table::read(&path).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.x.row(1).to_vec(), [3.0, 4.0]);
        // Other columns are refused, and so is gzip.
        let other = vec!["qemu:c".to_string()];
        let err = DatasetWriter::append(&path, &other)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("other columns"), "{err}");
        let err = DatasetWriter::append(&dir.path().join("t.csv.gz"), &feats)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("only plain CSV"), "{err}");
    }

    #[test]
    fn rows_carry_their_qemu_and_old_files_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        let feats = vec!["qemu:a".to_string()];
        let a = QemuBuild::new(Some(&[0xab, 0x01]), Some("7.2.22 (Debian, vmwatch)".into()));
        let b = QemuBuild::new(Some(&[0xcd]), None);
        let mut w = DatasetWriter::create(&path, &feats, false).unwrap();
        for (q, n) in [(Some(&a), 1), (Some(&b), 2), (None, 3), (Some(&a), 4)] {
            w.write_row(&Row {
                qemu: q,
                ..row(&[n])
            })
            .unwrap();
        }
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#",ab01,"7.2.22 (Debian, vmwatch)",,1"#),
            "{text}"
        );
        let t = Table::read(&path).unwrap();
        assert_eq!(t.features, feats, "provenance columns are no features");
        assert_eq!(t.x.column(0).to_vec(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(t.keys[0].qemu.as_deref(), Some(&a));
        assert_eq!(t.keys[2].qemu, None);
        assert_eq!(t.qemu_builds(), [a.clone(), b.clone()]);
        // Found by name, in any order; a file of an older vmwatch has none.
        let moved = write(
            dir.path(),
            "moved.csv",
            &format!("{HEAD},qemu:a,qemu_version,qemu_build_id\nv,1,x,0,10,2000,5,9.2.0,ff\n"),
        );
        let t = Table::read(&moved).unwrap();
        assert_eq!(t.features, feats);
        assert_eq!(t.x[[0, 0]], 5.0);
        let q = t.keys[0].qemu.as_deref().unwrap();
        assert_eq!(
            (q.build_id.as_deref(), q.version.as_deref()),
            (Some("ff"), Some("9.2.0"))
        );
        let old = write(
            dir.path(),
            "old.csv",
            &format!("{HEAD},qemu:a\nv,1,x,0,10,2000,5\n"),
        );
        let t = Table::read(&old).unwrap();
        assert_eq!((t.keys[0].qemu.clone(), t.qemu_builds()), (None, vec![]));
        // What a file says about a build is checked.
        let bad = write(
            dir.path(),
            "bad.csv",
            &format!("{HEAD},qemu_build_id,qemu:a\nv,1,x,0,10,2000,xyz,5\n"),
        );
        let err = Table::read(&bad).error_message();
        assert!(err.contains("line 2: QEMU build id `xyz` is not"), "{err}");
        let dup = write(
            dir.path(),
            "dup.csv",
            &format!("{HEAD},qemu_build_id,qemu_build_id\n"),
        );
        let err = Table::read(&dup).error_message();
        assert!(
            err.contains("column `qemu_build_id` appears twice"),
            "{err}"
        );
    }

    #[test]
    fn append_upgrades_the_layout_of_an_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let feats = vec!["qemu:a".to_string(), "qemu:b".to_string()];
        let q = QemuBuild::new(Some(&[1]), None);
        // Files of the two older layouts: no extra columns, provenance only.
        for (name, old) in [
            (
                "none.csv",
                format!("{HEAD},qemu:a,qemu:b\n\"v,1\",1,x,0,10,2000,5,1\n"),
            ),
            (
                "prov.csv",
                format!(
                    "{HEAD},qemu_build_id,qemu_version,qemu:a,qemu:b\n\"v,1\",1,x,0,10,2000,01,\
                     \"7.2 (a, b)\",5,1\n"
                ),
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, old).unwrap();
            let (mut w, had) = DatasetWriter::append(&path, &feats).unwrap();
            assert_eq!(had, 1);
            assert!(w.marks_estimates());
            w.write_row(&Row {
                qemu: Some(&q),
                sampled: &[(1, 0.25)],
                ..row(&[6, 8])
            })
            .unwrap();
            w.finish().unwrap();
            let t = Table::read(&path).unwrap();
            assert_eq!(t.features, feats);
            assert_eq!(t.x.column(0).to_vec(), [5.0, 6.0], "{name}");
            assert_eq!(t.x.column(1).to_vec(), [1.0, 8.0], "{name}");
            assert_eq!(t.keys[0].vm, "v,1");
            assert!(t.keys[0].sampled.is_empty());
            assert_eq!(t.keys[1].sampled, [(1, 0.25)]);
            assert_eq!(t.keys[1].qemu.as_deref(), Some(&q));
            let kept = if name == "prov.csv" {
                Some("7.2 (a, b)")
            } else {
                None
            };
            assert_eq!(
                t.keys[0].qemu.as_ref().and_then(|b| b.version.as_deref()),
                kept
            );
        }
        // A new file has the provenance columns, and grows with them.
        let new = dir.path().join("new.csv");
        let (w, _) = DatasetWriter::append(&new, &feats).unwrap();
        w.finish().unwrap();
        let (mut w, had) = DatasetWriter::append(&new, &feats).unwrap();
        assert_eq!(had, 0);
        w.write_row(&Row {
            qemu: Some(&q),
            ..row(&[7, 0])
        })
        .unwrap();
        w.finish().unwrap();
        assert_eq!(Table::read(&new).unwrap().qemu_builds(), [q]);
    }

    #[test]
    fn estimated_counts_are_marked_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        let feats = vec!["qemu:a".to_string(), "qemu:b".to_string()];
        let mut w = DatasetWriter::create(&path, &feats, false).unwrap();
        w.write_row(&row(&[1, 2])).unwrap();
        w.write_row(&Row {
            sampled: &[(0, 0.0625), (1, 0.333_333_3)],
            ..row(&[160, 9])
        })
        .unwrap();
        // A fraction of 0 or 1 is no estimate; a column beyond the row is none.
        for bad in [&[(0, 1.0)][..], &[(0, 0.0)], &[(2, 0.5)], &[(0, f64::NAN)]] {
            let e = w
                .write_row(&Row {
                    sampled: bad,
                    ..row(&[1, 2])
                })
                .unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(",,,qemu:a=0.0625;qemu:b=0.3333,160,9\n"),
            "{text}"
        );
        let t = Table::read(&path).unwrap();
        assert_eq!(t.features, feats, "`sampled` is no feature");
        assert!(t.keys[0].sampled.is_empty());
        assert_eq!(t.keys[1].sampled, [(0, 0.0625), (1, 0.3333)]);
        let est = t.estimated(&["qemu:b".into(), "qemu:a".into(), "qemu:c".into()]);
        assert_eq!(est.len(), 2);
        assert_eq!((est[0].feature.as_str(), est[0].windows), ("qemu:b", 0.5));
        assert!((est[1].mean_fraction - 0.0625).abs() < 1e-6);
        // Several files: the marks follow their features' columns.
        let other = write(
            dir.path(),
            "other.csv",
            &format!("{HEAD},sampled,qemu:b\nv,1,x,0,10,2000,qemu:b=0.5,4\n"),
        );
        let all = Table::read_all(&[other, path]).unwrap();
        assert_eq!(all.features, ["qemu:b", "qemu:a"]);
        assert_eq!(all.keys[0].sampled, [(0, 0.5)]);
        assert_eq!(all.keys[2].sampled, [(1, 0.0625), (0, 0.3333)]);
        // Malformed marks name the line and what is wrong.
        for (cell, says) in [
            ("qemu:c=0.5", "not a feature of the file"),
            ("qemu:b", "not feature=fraction"),
            ("qemu:b=1.5", "not a fraction"),
            ("qemu:b=0.5;qemu:b=0.25", "appears twice"),
        ] {
            let f = write(
                dir.path(),
                "bad.csv",
                &format!("{HEAD},sampled,qemu:b\nv,1,x,0,10,2000,{cell},4\n"),
            );
            let err = Table::read(&f).error_message();
            assert!(
                err.contains("line 2") && err.contains(says),
                "{cell}: {err}"
            );
        }
    }

    #[test]
    fn gz_rows_survive_without_trailer() {
        let (_dir, path, mut w) = writer("d.csv.gz");
        w.write_row(&row(&[7])).unwrap();
        w.flush().unwrap();
        // Simulate a crash: the file is read before finish() writes the trailer.
        let mut text = String::new();
        let _ = flate2::read::GzDecoder::new(File::open(&path).unwrap()).read_to_string(&mut text);
        assert!(text.contains(",7\n"), "{text:?}");
        std::mem::forget(w);
    }
}
