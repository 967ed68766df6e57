//! The lab's network: a network namespace of its own (`vmwatch-lab-<pid>-<n>`)
//! holding a bridge with the host-side address 10.77.0.1/24 and one tap per VM.
//! QEMU, the load generator and the host-side tools run inside it, so no lab
//! traffic can reach the host's real interfaces.
//!
//! [`Net`] is RAII: dropping it kills whatever still runs in the namespace (only
//! processes the lab started can be there) and deletes the namespace, which
//! removes its bridge and taps with it. A namespace left by a killed run (its
//! pid is gone) is removed by the next [`Net::create`].

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{self, note};

/// The lab subnet (inside the namespace only).
pub const SUBNET: &str = "10.77.0.0/24";
/// The prefix length of [`SUBNET`].
pub const PREFIX: u8 = 24;
/// The bridge's address: the host side of the lab (load generator, targets).
pub const HOST_IP: &str = "10.77.0.1";
/// The bridge inside the namespace.
pub const BRIDGE: &str = "br0";
/// Namespace names start with this, then `<pid>-<n>`.
pub const NS_PREFIX: &str = "vmwatch-lab-";
/// Most VMs on one lab network (addresses .11 to .250).
pub const MAX_VMS: usize = 240;

/// Address of VM `i` (0-based): 10.77.0.11, .12, …
pub fn vm_ip(i: usize) -> String {
    format!("10.77.0.{}", 11 + i)
}

/// MAC address of VM `i`: locally administered, QEMU's 52:54:00 prefix.
pub fn vm_mac(i: usize) -> String {
    let host = 11 + i;
    format!("52:54:00:77:{:02x}:{:02x}", host >> 8, host & 0xff)
}

/// Name of VM `i`'s tap device (inside the namespace).
pub fn tap_name(i: usize) -> String {
    format!("tap{i}")
}

/// A lab network namespace with its bridge and taps.
pub struct Net {
    name: String,
}

impl Net {
    /// Creates the namespace, the bridge (10.77.0.1/24) and `vms` taps. Removes
    /// stale lab namespaces of dead runs first. Needs root.
    pub fn create(vms: usize) -> Result<Net> {
        if vms == 0 || vms > MAX_VMS {
            bail!("the lab network holds 1 to {MAX_VMS} VMs, not {vms}");
        }
        remove_stale();
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        util::output(Command::new("ip").args(["netns", "add", &name])).with_context(|| {
            format!("could not create the network namespace {name} (the lab needs root)")
        })?;
        // From here on, dropping `net` deletes the namespace again.
        let net = Net { name };
        net.ip(&["link", "set", "lo", "up"])?;
        net.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        net.ip(&["addr", "add", &format!("{HOST_IP}/{PREFIX}"), "dev", BRIDGE])?;
        net.ip(&["link", "set", BRIDGE, "up"])?;
        for i in 0..vms {
            let tap = tap_name(i);
            net.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            net.ip(&["link", "set", &tap, "master", BRIDGE])?;
            net.ip(&["link", "set", &tap, "up"])?;
        }
        note(format!(
            "lab network: namespace {}, bridge {BRIDGE} {HOST_IP}/{PREFIX}, {} tap(s)",
            net.name, vms
        ));
        Ok(net)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount (what `setns` opens).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME ARGS…`.
    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        util::output(&mut cmd).map(|_| ())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Makes `cmd` run in its own process group, enter the namespace of `ns` (an
/// open `/run/netns/NAME`; `None`: stay in the host's) between fork and exec,
/// and die with SIGKILL when xtask does. `ns` must stay open until the
/// command is spawned.
pub fn enter_in_child(cmd: &mut Command, ns: Option<&fs::File>) {
    cmd.process_group(0);
    if let Some(ns) = ns {
        let fd = ns.as_raw_fd();
        // SAFETY: setns is an async-signal-safe syscall.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    // Registered second, so it runs after setns.
    util::die_with_parent(cmd, libc::SIGKILL);
}

fn ns_pids(name: &str) -> Vec<u32> {
    util::output(Command::new("ip").args(["netns", "pids", name]))
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills what runs in the namespace (SIGKILL, by pid) and deletes it.
fn delete(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = ns_pids(name);
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            note(format!(
                "processes {pids:?} are still in the namespace {name}; deleting it anyway"
            ));
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) of a process in the lab's own namespace.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Err(e) = util::output(Command::new("ip").args(["netns", "delete", name])) {
        note(format!(
            "could not delete the network namespace {name}: {e:#}"
        ));
    }
}

/// `vmwatch-lab-4242-0` → 4242.
pub fn ns_owner(name: &str) -> Option<u32> {
    util::owner_pid(name, NS_PREFIX)
}

/// Deletes lab namespaces whose xtask is gone (a killed run).
pub fn remove_stale() {
    let Ok(list) = util::output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(pid) = ns_owner(name) {
            if !util::pid_alive(pid) {
                note(format!("removing the stale lab namespace {name}"));
                delete(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(vm_ip(0), "10.77.0.11");
        assert_eq!(vm_ip(3), "10.77.0.14");
        assert_eq!(vm_mac(0), "52:54:00:77:00:0b");
        assert_eq!(vm_mac(239), "52:54:00:77:00:fa");
        assert_eq!(tap_name(2), "tap2");
        assert_eq!(vm_ip(MAX_VMS - 1), "10.77.0.250");
    }

    #[test]
    fn owners() {
        assert_eq!(ns_owner("vmwatch-lab-4242-0"), Some(4242));
        assert_eq!(ns_owner("vmwatch-lab-4242"), None);
        assert_eq!(ns_owner("other-4242-0"), None);
        assert_eq!(ns_owner("vmwatch-lab-x-0"), None);
    }
}
