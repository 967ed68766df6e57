//! JSON-lines events for log shippers: one `window` event per VM and
//! window, one `phase` event when a VM moves between learning, training and
//! monitoring, one `verdict` event when its smoothed verdict turns
//! anomalous or normal again. Flushed every window.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// One event.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event<'a> {
    Window {
        start_unix_ms: u64,
        vm: &'a str,
        uuid: Option<&'a str>,
        pid: u32,
        window: u64,
        state: &'a str,
        score: Option<f64>,
        anomalous: Option<bool>,
    },
    Phase {
        start_unix_ms: u64,
        vm: &'a str,
        uuid: Option<&'a str>,
        from: &'a str,
        to: &'a str,
    },
    Verdict {
        start_unix_ms: u64,
        vm: &'a str,
        uuid: Option<&'a str>,
        from: &'a str,
        to: &'a str,
        score: f64,
    },
}

/// Where events go.
pub struct Events {
    out: Option<Box<dyn Write + Send>>,
}

impl Events {
    /// To `path` (appended), stdout for `-`, or nowhere.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match path {
            None => None,
            Some(p) if p == Path::new("-") => Some(Box::new(std::io::stdout())),
            Some(p) => {
                let f: File = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::io(format!("cannot open {} for events", p.display()), e))?;
                Some(Box::new(BufWriter::new(f)))
            }
        };
        Ok(Self { out })
    }

    pub fn emit(&mut self, event: &Event<'_>) {
        let Some(out) = &mut self.out else { return };
        let mut line = serde_json::to_vec(event).expect("an event serializes");
        line.push(b'\n');
        if let Err(e) = out.write_all(&line) {
            tracing::warn!("writing an event: {e}");
        }
    }

    pub fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                tracing::warn!("writing events: {e}");
            }
        }
    }
}
