//! `vmwatch ctl`: talking to the running agent over a Unix socket in its
//! state directory (mode 0600 in a 0700 folder; the agent also checks the
//! peer's uid with SO_PEERCRED, so only root, or the agent's own user, is
//! answered). One JSON request per line, one JSON answer per line.
//!
//! `status` is answered at once from the last window's snapshot; `relearn`
//! and `forget` change a VM's lifecycle, so the window loop carries them out
//! at its next window (within one interval) and then answers.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What `ctl` asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// Learn again (the old windows are kept) and retrain.
    Relearn {
        vm: String,
    },
    /// Drop everything the agent learned of the VM.
    Forget {
        vm: String,
    },
    /// Everything the agent learned of the VM, to move it to another host.
    Export {
        vm: String,
    },
    /// State exported on another host (a live-migrated VM keeps its profile).
    Import {
        bundle: Box<Bundle>,
    },
}

/// A VM's state as `ctl export` writes it and `ctl import` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    pub version: u32,
    pub meta: crate::agent::state::VmMeta,
    /// The training set (CSV text).
    pub training: Option<String>,
    /// The model file (JSON text).
    pub model: Option<String>,
}

/// Identifies a [`Bundle`].
pub const BUNDLE_FORMAT: &str = "vmwatch-vm-state";

/// One VM in `ctl status` (DESIGN.md: `ctl status --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub vm: String,
    pub uuid: Option<String>,
    /// `None` when the VM does not run now.
    pub pid: Option<u32>,
    pub state: String,
    pub windows_learned: u64,
    /// Last window's decision value.
    pub score: Option<f64>,
    pub anomalous: Option<bool>,
    /// Estimated share of one CPU its probe hits cost (last window).
    pub probe_cost_ratio: Option<f64>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Status { vms: Vec<VmStatus> },
    Bundle { bundle: Box<Bundle> },
    Done { message: String },
    Error { message: String },
}

/// A lifecycle request waiting for the window loop, and where its answer
/// goes.
pub type Pending = (Request, Sender<Response>);

/// The listening side, run by the agent.
pub struct Server {
    path: PathBuf,
    /// What `status` answers; the window loop replaces it every window
    /// (`None` until the agent has attached to the VMs there are).
    pub snapshot: Arc<Mutex<Option<Vec<VmStatus>>>>,
    /// Requests for the window loop.
    pub pending: Receiver<Pending>,
}

/// How long a client waits for an answer (a relearn waits for the next
/// window).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

impl Server {
    /// Listens on `path`; a socket left by an agent that is gone is
    /// replaced, one another agent still answers on is not.
    pub fn start(path: &Path) -> Result<Self> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::Invalid(format!(
                    "another vmwatch agent answers on {}",
                    path.display()
                )));
            }
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("cannot remove the stale {}", path.display()), e))?;
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("cannot restrict {}", path.display()), e))?;
        let snapshot = Arc::new(Mutex::new(None));
        let (tx, pending) = mpsc::channel();
        let shared = snapshot.clone();
        std::thread::Builder::new()
            .name("ctl".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (shared, tx) = (shared.clone(), tx.clone());
                    // One thread per client: a relearn must not hold up a status.
                    let _ =
                        std::thread::Builder::new()
                            .name("ctl-client".into())
                            .spawn(move || {
                                if let Err(e) = serve(stream, &shared, &tx) {
                                    tracing::debug!("ctl client: {e}");
                                }
                            });
                }
            })
            .map_err(|e| Error::io("starting the ctl thread", e))?;
        Ok(Self {
            path: path.to_owned(),
            snapshot,
            pending,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    stream: UnixStream,
    snapshot: &Mutex<Option<Vec<VmStatus>>>,
    pending: &Sender<Pending>,
) -> std::io::Result<()> {
    let answer = match peer_uid(&stream) {
        // SAFETY: geteuid has no preconditions.
        Some(uid) if uid == 0 || uid == unsafe { libc::geteuid() } => {
            let mut line = String::new();
            BufReader::new(stream.try_clone()?).read_line(&mut line)?;
            match serde_json::from_str::<Request>(&line) {
                Ok(Request::Status) => match snapshot.lock().ok().and_then(|s| s.clone()) {
                    Some(vms) => Response::Status { vms },
                    None => Response::Error {
                        message: "the agent is still starting; ask again in a moment".into(),
                    },
                },
                Ok(req) => {
                    let (tx, rx) = mpsc::channel();
                    let _ = pending.send((req, tx));
                    rx.recv_timeout(ANSWER_TIMEOUT).unwrap_or(Response::Error {
                        message: "the agent did not answer in time".into(),
                    })
                }
                Err(e) => Response::Error {
                    message: format!("not a ctl request: {e}"),
                },
            }
        }
        uid => Response::Error {
            message: format!(
                "uid {} may not control the agent (root only)",
                uid.map_or("?".into(), |u| u.to_string())
            ),
        },
    };
    let mut stream = stream;
    let mut text = serde_json::to_string(&answer).expect("an answer serializes");
    text.push('\n');
    stream.write_all(text.as_bytes())
}

/// The uid of the process at the other end of `stream`.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;

    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of the size given.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (ret == 0).then_some(cred.uid)
}

/// Sends `request` to the agent listening on `socket` and returns its
/// answer.
pub fn request(socket: &Path, request: &Request) -> Result<Response> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::NotFound
            || e.kind() == std::io::ErrorKind::ConnectionRefused
        {
            format!(
                "no vmwatch agent runs with state directory {} (no one answers on {})",
                socket
                    .parent()
                    .map_or_else(|| ".".into(), |p| p.display().to_string()),
                socket.display()
            )
        } else {
            format!("cannot reach the agent on {}", socket.display())
        };
        Error::io(what, e)
    })?;
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT + Duration::from_secs(5)));
    let mut text = serde_json::to_string(request).expect("a request serializes");
    text.push('\n');
    stream
        .write_all(text.as_bytes())
        .map_err(|e| Error::io("sending the request to the agent", e))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the agent's answer", e))?;
    serde_json::from_str(&line)
        .map_err(|e| Error::Invalid(format!("the agent's answer is not understood: {e}")))
}
