//! Stop requests as a channel, so the window loop can wait for "the next
//! deadline or a stop request, whichever comes first".
//!
//! SIGHUP (the terminal or ssh session went away) and SIGQUIT stop vmwatch
//! like SIGINT and SIGTERM: their default action would kill it without
//! lowering the semaphores it raised in every watched QEMU or closing its
//! output.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};

/// The signals that ask vmwatch to stop cleanly.
pub const STOP_SIGNALS: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

/// Receives stop requests (any of [`STOP_SIGNALS`]).
pub struct StopSignal {
    rx: Receiver<i32>,
}

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Deadline,
    Stop(i32),
}

impl StopSignal {
    /// Installs the handlers. Signals arriving from now on are queued.
    pub fn install() -> Result<Self> {
        let mut signals = Signals::new(STOP_SIGNALS)
            .map_err(|e| Error::io("installing the SIGINT/SIGTERM/SIGHUP/SIGQUIT handlers", e))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("starting the signal thread", e))?;
        Ok(Self { rx })
    }

    /// Waits until `deadline` unless a stop request comes first.
    pub fn wait_until(&self, deadline: Instant) -> Wake {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(timeout) {
            Ok(sig) => Wake::Stop(sig),
            Err(RecvTimeoutError::Timeout) => Wake::Deadline,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                Wake::Deadline
            }
        }
    }
}
