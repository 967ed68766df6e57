//! A private libvirt for the tests: Debian's `libvirtd`, run by the test as
//! a child (no systemd, no `--daemon`) in a mount and network namespace of
//! its own, with its configuration and all its state in a scratch
//! directory, so that it neither sees nor changes the host's libvirt; and
//! the transient domains it runs. Dropping the [`Libvirtd`] destroys its
//! domains, stops it and removes what it left.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Debian's monolithic daemon (bookworm ships no virtqemud) and client.
pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";
pub const VIRSH: &str = "/usr/bin/virsh";

/// The account Debian's libvirt runs QEMU as (a system account, uid 64055).
pub const QEMU_USER: &str = "libvirt-qemu";

/// Whether libvirt tests can run here; prints why not when they cannot.
/// In CI (CI=true) a missing libvirt is a failure, not a skip.
pub fn available(test: &str) -> bool {
    let missing = if !Path::new(LIBVIRTD).exists() {
        format!("no {LIBVIRTD}")
    } else if !Path::new(VIRSH).exists() {
        format!("no {VIRSH}")
    } else if !has_user(QEMU_USER) {
        format!("no user {QEMU_USER}")
    } else {
        return true;
    };
    let why = format!(
        "libvirt is not installed ({missing}): install the packages of section `agent` \
         of xtask/packages.txt (`cargo xtask deps` as root)"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

fn has_user(name: &str) -> bool {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(':').next() == Some(name))
}

/// One private libvirt at a time: they share the host's cgroup tree.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Run inside the new namespaces by `sh -e`, `$1` the scratch directory
/// and `$2` libvirtd. The namespaces are private (`unshare`'s default
/// propagation), so none of these mounts reaches the host.
const NAMESPACE_SCRIPT: &str = r#"
d=$1
# Configuration and state of the private daemon. All of /run, so that it
# sees no D-Bus, no systemd and no other libvirt: it runs without them.
mount --bind "$d/etc" /etc/libvirt
mount --bind "$d/run" /run
mount --bind "$d/lib" /var/lib/libvirt
mount --bind "$d/cache" /var/cache/libvirt
mount --bind "$d/log" /var/log/libvirt
# /dev/kvm as Debian's udev rule makes it (root:kvm 0660; libvirt-qemu is
# in group kvm). Containers often have it root-only, and then libvirt,
# which probes QEMU with CAP_DAC_OVERRIDE, finds KVM at the probe but not
# for its qemu user afterwards, throws the probe away and probes again on
# every lookup: 40 s instead of 4 before a domain starts.
if [ -c /dev/kvm ]; then
    mount -t tmpfs -o mode=0700,size=64k vmwatch-kvm "$d/dev"
    mknod -m 0660 "$d/dev/kvm" c $((0x$(stat -c %t /dev/kvm))) $((0x$(stat -c %T /dev/kvm)))
    chgrp kvm "$d/dev/kvm"
    mount --bind "$d/dev/kvm" /dev/kvm
fi
# In the foreground; it quits after 2 idle minutes if nobody stops it
# (running domains keep it busy).
exec "$2" -f /etc/libvirt/libvirtd.conf -p /run/libvirtd.pid --timeout 120
"#;

const LIBVIRTD_CONF: &str = r#"# The private libvirtd of a vmwatch test: UNIX sockets only (without
# --listen it opens no TCP port), for root only, no polkit.
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
# Errors and warnings to stderr: libvirtd.log of the scratch directory.
log_outputs = "3:stderr"
"#;

const QEMU_CONF: &str = r#"# Debian's defaults, spelled out: QEMU runs as the system account
# libvirt-qemu, which vmwatch takes for a VM's like root.
user = "libvirt-qemu"
group = "libvirt-qemu"
# No AppArmor or SELinux in a container.
security_driver = "none"
# QEMU's output straight to /var/log/libvirt/qemu/NAME.log: no virtlogd.
stdio_handler = "file"
"#;

/// A domain libvirt runs.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    /// As given to libvirt.
    pub uuid: String,
    /// libvirt's domain ID.
    pub id: u32,
    /// The QEMU process.
    pub pid: u32,
}

/// A private libvirtd, stopped (with its domains) when dropped.
pub struct Libvirtd {
    daemon: Child,
    /// Configuration, state, logs and the emulator copy.
    dir: tempfile::TempDir,
    /// The `<emulator>` of the domains: a copy of the instrumented QEMU in a
    /// directory libvirt-qemu may enter (the cache's is under root's home).
    pub emulator: PathBuf,
    uri: String,
    /// cgroup directories libvirt may create (its `machine` partition in
    /// each hierarchy) that did not exist before it started.
    new_cgroups: Vec<PathBuf>,
    /// The domains started, with their QEMU's start time.
    started: Vec<(Domain, u64)>,
    stopped: bool,
    _one: MutexGuard<'static, ()>,
}

impl Libvirtd {
    /// Starts a private libvirtd whose domains run a copy of `qemu` (with
    /// the firmware of its install prefix); returns once it answers.
    pub fn start(qemu: &Path) -> Self {
        let one = super::hold(&ONE_AT_A_TIME);
        let dir = tempfile::Builder::new()
            .prefix("vmwatch-libvirt-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        // libvirt-qemu must reach the emulator.
        super::chmod(d, 0o755);
        for sub in ["etc", "run", "lib", "cache", "log", "dev"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        fs::write(d.join("etc/libvirtd.conf"), LIBVIRTD_CONF).unwrap();
        fs::write(d.join("etc/qemu.conf"), QEMU_CONF).unwrap();
        let emulator = copy_qemu(qemu, &d.join("qemu"));
        let new_cgroups = machine_cgroups()
            .into_iter()
            .filter(|p| !p.exists())
            .collect();

        let log = File::create(d.join("libvirtd.log")).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--net",
            "--",
            "sh",
            "-ec",
            NAMESPACE_SCRIPT,
            "sh",
        ])
        .arg(d)
        .arg(LIBVIRTD)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        // Should the test process be killed (no Drop), the daemon is told
        // to quit. SAFETY: prctl is async-signal-safe; nothing else runs
        // in the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let daemon = cmd.spawn().expect("start unshare … libvirtd");
        let socket = d.join("run/libvirt/libvirt-sock");
        let uri = format!("qemu:///system?socket={}", socket.display());
        // From here on, a panic stops the daemon (Drop).
        let mut libvirt = Self {
            daemon,
            dir,
            emulator,
            uri,
            new_cgroups,
            started: Vec::new(),
            stopped: false,
            _one: one,
        };
        libvirt.wait_until_ready(Duration::from_secs(30));
        libvirt
    }

    fn wait_until_ready(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.daemon.try_wait() {
                panic!("libvirtd exited ({status}) at start: {}", self.log());
            }
            if self.virsh(&["uri"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < end,
                "libvirtd did not answer within {timeout:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// Where libvirt keeps its domains' PID files (`/run/libvirt/qemu` to
    /// the daemon).
    pub fn pid_dir(&self) -> PathBuf {
        self.dir.path().join("run/libvirt/qemu")
    }

    /// `virsh -c URI ARGS…`, whatever comes of it.
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new(VIRSH)
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .expect("run virsh")
    }

    /// `virsh ARGS…`: it must succeed; its stdout.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(
            out.status.success(),
            "virsh {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a transient TCG domain (`virsh create`): 64 MiB, no disk, no
    /// NIC, no graphics, a null serial port; returns once it runs. SeaBIOS
    /// finds nothing to boot and waits, firing QEMU's probes steadily.
    pub fn create(&mut self, name: &str, uuid: &str) -> Domain {
        let n = self.started.len() + 1;
        let xml = self.dir.path().join(format!("domain-{n}.xml"));
        fs::write(&xml, self.domain_xml(name, uuid)).unwrap();
        self.virsh_ok(&["create", &xml.to_string_lossy()]);
        let end = Instant::now() + Duration::from_secs(30);
        while self.virsh_ok(&["domstate", name]).trim() != "running" {
            assert!(Instant::now() < end, "{name} does not run: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid_file = self.pid_dir().join(format!("{name}.pid"));
        let pid: u32 = fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
            .trim()
            .parse()
            .unwrap();
        let t = start_time(pid).unwrap_or_else(|| panic!("QEMU of {name} (PID {pid}) is gone"));
        let id = self.virsh_ok(&["domid", name]).trim().parse().unwrap();
        let dom = Domain {
            name: name.to_string(),
            uuid: uuid.to_string(),
            id,
            pid,
        };
        self.started.push((dom.clone(), t));
        dom
    }

    // `<acpi/>`: without it bookworm's libvirt 9.0 passes `-no-acpi`, which
    // QEMU 10 no longer accepts (the machine property `acpi=off` replaced it).
    fn domain_xml(&self, name: &str, uuid: &str) -> String {
        format!(
            "<domain type='qemu'>
  <name>{}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{}</emulator>
    <serial type='null'/>
    <memballoon model='none'/>
  </devices>
</domain>
",
            xml_escape(name),
            xml_escape(&self.emulator.to_string_lossy())
        )
    }

    /// `virsh destroy NAME`; returns once its QEMU is gone.
    pub fn destroy(&self, dom: &Domain) {
        self.virsh_ok(&["destroy", &dom.name]);
        let end = Instant::now() + Duration::from_secs(10);
        while is_running(dom.pid) {
            assert!(
                Instant::now() < end,
                "QEMU of {} outlived destroy",
                dom.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What libvirtd and a domain's QEMU said, for failure messages.
    pub fn log(&self) -> String {
        let mut text = String::new();
        let daemon = fs::read_to_string(self.dir.path().join("libvirtd.log")).unwrap_or_default();
        // The node device driver's complaints about this host's NICs.
        let lines: Vec<&str> = daemon
            .lines()
            .filter(|l| !l.contains("ethtool ioctl error"))
            .collect();
        text.push_str("\n--- libvirtd.log (last lines) ---\n");
        text.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
        if let Ok(entries) = fs::read_dir(self.dir.path().join("log/qemu")) {
            for e in entries.flatten() {
                let qemu = fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = qemu.lines().collect();
                text.push_str(&format!("\n--- {} ---\n", e.path().display()));
                text.push_str(&lines[lines.len().saturating_sub(10)..].join("\n"));
            }
        }
        text
    }

    /// Destroys the domains, stops the daemon and removes what they left;
    /// anything left over is a failure.
    pub fn stop(mut self) {
        let left = self.clean_up();
        assert!(left.is_empty(), "left behind: {}", left.join("; "));
    }

    /// Best effort: what could not be cleaned up.
    fn clean_up(&mut self) -> Vec<String> {
        self.stopped = true;
        let mut left = Vec::new();
        let alive =
            |(dom, t): &(Domain, u64)| start_time(dom.pid) == Some(*t) && is_running(dom.pid);
        if matches!(self.daemon.try_wait(), Ok(None)) {
            for (dom, _) in self.started.iter().filter(|d| alive(d)) {
                let _ = self.virsh(&["destroy", &dom.name]);
            }
        }
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        if !wait_child(&mut self.daemon, Duration::from_secs(15)) {
            left.push(format!(
                "libvirtd (PID {}) ignored SIGTERM",
                self.daemon.id()
            ));
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        for (dom, _) in self.started.iter().filter(|d| alive(d)) {
            left.push(format!(
                "QEMU of {} (PID {}) outlived libvirtd (killed)",
                dom.name, dom.pid
            ));
            // SAFETY: kill(2) of the QEMU this daemon started (same PID
            // and start time).
            unsafe { libc::kill(dom.pid as i32, libc::SIGKILL) };
        }
        let end = Instant::now() + Duration::from_secs(10);
        while self.started.iter().any(alive) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        for cg in &self.new_cgroups {
            remove_cgroup_tree(cg);
            if cg.exists() {
                left.push(format!("cgroup {}", cg.display()));
            }
        }
        left
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if !self.stopped {
            for what in self.clean_up() {
                eprintln!("libvirt test: left behind: {what}");
            }
        }
    }
}

/// Copies `qemu` to `dir/bin/` and its install prefix's `share/qemu`
/// (firmware; QEMU finds it relative to its executable) to `dir/share/`;
/// root-owned, mode 0755 like the original. Returns the copy.
fn copy_qemu(qemu: &Path, dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let name = qemu.file_name().expect("a QEMU file name");
    let copy = super::install(qemu, &bin, &name.to_string_lossy());
    let data = qemu
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("share/qemu"))
        .filter(|d| d.is_dir());
    if let Some(data) = data {
        fs::create_dir_all(dir.join("share")).unwrap();
        let status = Command::new("cp")
            .arg("-R")
            .arg(&data)
            .arg(dir.join("share/qemu"))
            .status()
            .expect("run cp");
        assert!(status.success(), "copying {} failed", data.display());
    }
    copy
}

/// `<mount point>/machine` of every cgroup hierarchy: where libvirt
/// without systemd puts its machines.
fn machine_cgroups() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| Path::new(mount_point).join("machine"))
        })
        .collect()
}

/// Removes a cgroup directory and those below it (rmdir only: a cgroup
/// that still has processes stays).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Waits for a child to exit; whether it did within `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Start time of `pid` (clock ticks since boot), if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| !matches!(f.first().map(String::as_str), Some("Z" | "X")))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}
