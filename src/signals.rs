//! SIGINT/SIGTERM as a channel, so the window loop can wait for "the next
//! deadline or a stop request, whichever comes first".

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};

/// Receives stop requests (SIGINT, SIGTERM).
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
        let mut signals = Signals::new([SIGINT, SIGTERM])
            .map_err(|e| Error::io("installing SIGINT/SIGTERM handlers", e))?;
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
