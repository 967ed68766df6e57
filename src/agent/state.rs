//! The agent's state directory: one folder per VM, keyed by its UUID (else
//! its name), holding what the VM has learned, so a restarted agent resumes
//! every VM where it was.
//!
//! ```text
//! STATE_DIR/agent.sock             the control socket (`vmwatch ctl`)
//! STATE_DIR/vms/KEY/vm.json        identity and lifecycle (written atomically)
//! STATE_DIR/vms/KEY/training.csv   the windows learned, appended as they close
//! STATE_DIR/vms/KEY/model.json     the trained model (written atomically)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmwatch_core::atomic;

use crate::error::{Error, Result};

/// A VM's identity across restarts: its UUID when QEMU has one (libvirt
/// always passes `-uuid`), else its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmKey(String);

impl VmKey {
    pub fn new(uuid: Option<&str>, name: &str) -> Self {
        match uuid {
            Some(u) => Self(format!("uuid-{u}")),
            None => Self(format!("name-{}", escape(name))),
        }
    }

    /// The folder name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for VmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A VM name as part of a folder name: letters, digits, `.`, `_` and `-`
/// stay, anything else becomes `%XX`, so no name can contain a `/`; the
/// `name-` prefix keeps `.` and `..` from being one.
fn escape(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a VM is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Its windows are appended to its training set.
    Learning,
    /// Its model is being fitted.
    Training,
    /// A verdict per window.
    Monitoring,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Learning => "learning",
            Phase::Training => "training",
            Phase::Monitoring => "monitoring",
        }
    }

    pub const ALL: [Phase; 3] = [Phase::Learning, Phase::Training, Phase::Monitoring];
}

/// What `vm.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmMeta {
    pub key: VmKey,
    pub name: String,
    pub uuid: Option<String>,
    pub phase: Phase,
    /// Rows the training set must hold before the model is (re)trained.
    pub learn_until: u64,
    /// Windows learned when the model was last trained.
    pub trained_on: Option<u64>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) `root` and its `vms` folder.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in [root.to_path_buf(), root.join("vms")] {
            atomic::private_dir(&dir)?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }

    pub fn vm(&self, key: &VmKey) -> VmDir {
        VmDir {
            path: self.root.join("vms").join(key.as_str()),
        }
    }

    /// Every VM with state, running or not.
    pub fn known(&self) -> Vec<VmMeta> {
        let Ok(entries) = fs::read_dir(self.root.join("vms")) else {
            return Vec::new();
        };
        let mut out: Vec<VmMeta> = entries
            .flatten()
            .filter_map(|e| {
                VmDir { path: e.path() }
                    .meta()
                    .map_err(|err| {
                        tracing::warn!("{}", vmwatch_core::error::chain(&err));
                    })
                    .ok()
                    .flatten()
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// One VM's folder.
#[derive(Debug, Clone)]
pub struct VmDir {
    path: PathBuf,
}

impl VmDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn training(&self) -> PathBuf {
        self.path.join("training.csv")
    }

    pub fn model(&self) -> PathBuf {
        self.path.join("model.json")
    }

    fn meta_path(&self) -> PathBuf {
        self.path.join("vm.json")
    }

    /// The VM's recorded state, if it has any.
    pub fn meta(&self) -> Result<Option<VmMeta>> {
        let path = self.meta_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Invalid(format!("{} is not a vmwatch VM state: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::read(path, e)),
        }
    }

    /// Records the VM's state (atomically), creating its folder.
    pub fn save(&self, meta: &VmMeta) -> Result<()> {
        atomic::private_dir(&self.path)?;
        let json = serde_json::to_vec_pretty(meta).expect("a VM state serializes");
        Ok(atomic::write(&self.meta_path(), &json)?)
    }

    /// Replaces the VM's state with an exported one (every file atomically;
    /// a file the bundle lacks is removed).
    pub fn import(&self, bundle: &super::ctl::Bundle) -> Result<()> {
        atomic::private_dir(&self.path)?;
        for (path, text) in [
            (self.training(), &bundle.training),
            (self.model(), &bundle.model),
        ] {
            match text {
                Some(t) => atomic::write(&path, t.as_bytes())?,
                None => match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(format!("cannot remove {}", path.display()), e))
                    }
                    _ => {}
                },
            }
        }
        self.save(&bundle.meta)
    }

    /// Drops everything the VM learned.
    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("cannot remove {}", self.path.display()),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_safe_folder_names() {
        let u = "7d2c9f0e-1b3a-4c5d-8e9f-0a1b2c3d4e5f";
        assert_eq!(VmKey::new(Some(u), "web").as_str(), format!("uuid-{u}"));
        assert_eq!(VmKey::new(None, "web-1.a_b").as_str(), "name-web-1.a_b");
        assert_eq!(VmKey::new(None, "../etc").as_str(), "name-..%2Fetc");
        assert_eq!(VmKey::new(None, "a b/c").as_str(), "name-a%20b%2Fc");
    }

    #[test]
    fn state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("s")).unwrap();
        let key = VmKey::new(None, "web");
        let meta = VmMeta {
            key: key.clone(),
            name: "web".into(),
            uuid: None,
            phase: Phase::Learning,
            learn_until: 30,
            trained_on: None,
        };
        let vm = state.vm(&key);
        assert_eq!(vm.meta().unwrap(), None);
        vm.save(&meta).unwrap();
        assert_eq!(vm.meta().unwrap(), Some(meta.clone()));
        assert_eq!(state.known(), [meta]);
        vm.remove().unwrap();
        assert!(state.known().is_empty());
    }
}
