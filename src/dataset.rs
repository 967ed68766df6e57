//! Dataset files (DESIGN.md): CSV, optionally gzip-compressed, one row per
//! (VM, window) with the leading columns below and one column per feature.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use ndarray::Array2;

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

/// Identity of one row (the leading columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowKey {
    pub vm: String,
    pub pid: u32,
    pub label: String,
    pub window: u64,
    pub start_unix_ms: u64,
    pub duration_ms: u64,
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
    /// magic bytes). Errors name the file, line and column.
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut reader = std::io::BufReader::new(file);
        let gz = {
            use std::io::BufRead;
            let head = reader.fill_buf().map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
            head.starts_with(&[0x1f, 0x8b])
        };
        let input: Box<dyn std::io::Read> = if gz {
            Box::new(flate2::read::MultiGzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let bad = |line: u64, msg: String| {
            Error::Invalid(format!("{} line {line}: {msg}", path.display()))
        };
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(input);
        let mut records = csv.records();
        let header = match records.next() {
            Some(Ok(h)) => h,
            Some(Err(e)) => return Err(bad(1, e.to_string())),
            None => return Err(Error::Invalid(format!("{} is empty", path.display()))),
        };
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
        let features: Vec<String> = header
            .iter()
            .skip(LEADING.len())
            .map(str::to_string)
            .collect();
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = features.iter().find(|f| !seen.insert(f.as_str())) {
            return Err(bad(1, format!("feature `{dup}` appears twice")));
        }
        let width = header.len();
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for (i, rec) in records.enumerate() {
            let line = i as u64 + 2;
            let rec = rec.map_err(|e| bad(line, e.to_string()))?;
            if rec.len() != width {
                return Err(bad(
                    line,
                    format!("{} fields, but the header has {width}", rec.len()),
                ));
            }
            let num = |col: usize| -> Result<u64> {
                rec[col].parse::<u64>().map_err(|_| {
                    bad(
                        line,
                        format!(
                            "column {} (`{}`): `{}` is not a non-negative integer",
                            col + 1,
                            &header[col],
                            &rec[col]
                        ),
                    )
                })
            };
            keys.push(RowKey {
                vm: rec[0].to_string(),
                pid: u32::try_from(num(1)?).map_err(|_| bad(line, "pid out of range".into()))?,
                label: rec[2].to_string(),
                window: num(3)?,
                start_unix_ms: num(4)?,
                duration_ms: num(5)?,
            });
            for col in LEADING.len()..width {
                values.push(num(col)? as f64);
            }
        }
        let x = Array2::from_shape_vec((keys.len(), features.len()), values)
            .expect("row widths were checked");
        Ok(Self { features, keys, x })
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
            for (i, key) in t.keys.into_iter().enumerate() {
                for (j, &c) in cols.iter().enumerate() {
                    x[[r, c]] = t.x[[i, j]];
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
        let index: std::collections::HashMap<&str, usize> = self
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        let mut out = Array2::zeros((self.len(), features.len()));
        for (j, f) in features.iter().enumerate() {
            if let Some(&c) = index.get(f.as_str()) {
                out.column_mut(j).assign(&self.x.column(c));
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
        let dir = tempfile::tempdir().unwrap();
        // 10 hits in 2 s and 30 in 1 s: 5/s and 30/s, mean 17.5/s.
        let a = write(
            dir.path(),
            "a.csv",
            &format!("{HEAD},qemu:a\nv,1,x,0,10,2000,10\nv,1,x,1,2010,1000,30\n"),
        );
        let t = Table::read(&a).unwrap();
        let r = t.mean_rates(&["qemu:a".into(), "qemu:none".into()]);
        assert_eq!(r, [17.5, 0.0]);
    }

    #[test]
    fn reads_what_the_writer_wrote_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv.gz");
        let feats = vec!["qemu:a".to_string()];
        let mut w = DatasetWriter::create(&path, &feats, false).unwrap();
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
        ];
        for (name, text, want) in cases {
            let p = write(dir.path(), name, &text);
            let err = Table::read(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        let err = Table::read(&dir.path().join("missing.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

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
