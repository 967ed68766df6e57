//! Host-side processes of the scenarios, all inside the lab's network
//! namespace: attack tools aimed at a VM (repeated until stopped or a deadline),
//! and the web server on 10.77.0.1 that the VM's `-source` attacks aim at.
//!
//! Each process runs in its own process group, with SIGKILL as its
//! parent-death signal; stopping (or dropping) kills the group (SIGTERM, then
//! SIGKILL after 2 s).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::net::{self, Net};
use crate::util::{self, note, Worker};

/// One process in the namespace; killed (with its process group) on drop.
pub struct HostProc {
    child: Child,
    what: String,
}

impl HostProc {
    /// Starts `argv` inside `net`, output appended to `log`.
    pub fn spawn(net: &Net, argv: &[String], log: &Path) -> Result<HostProc> {
        Self::spawn_in(&NetRef::of(net), argv, log)
    }

    fn spawn_in(ns: &NetRef, argv: &[String], log: &Path) -> Result<HostProc> {
        let (program, args) = argv.split_first().context("empty command")?;
        let ns_file = fs::File::open(&ns.path)
            .with_context(|| format!("could not open {}", ns.path.display()))?;
        let mut cmd = std::process::Command::new(program);
        net::enter_in_child(&mut cmd, Some(&ns_file));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("could not open {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let what = util::display(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{what}` in {}", ns.name))?;
        Ok(HostProc { child, what })
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    fn kill(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: signals to the process group of our own, not yet reaped child.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if self.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; the group may hold children of the tool.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tool run again and again (each run is bounded by the tool's own options)
/// until stopped or `deadline`.
pub struct Repeater {
    runs: Arc<AtomicU64>,
    worker: Worker,
    what: String,
}

impl Repeater {
    pub fn start(
        net: &Net,
        argv: Vec<String>,
        log: PathBuf,
        duration: Duration,
    ) -> Result<Repeater> {
        let what = argv.join(" ");
        note(format!(
            "host side, in {}: `{what}` (repeated, at most {}s; output in {})",
            net.name(),
            duration.as_secs(),
            log.display()
        ));
        // Started once here so that a tool that cannot start fails the run.
        let first = HostProc::spawn(net, &argv, &log)?;
        let runs = Arc::new(AtomicU64::new(1));
        let runs2 = runs.clone();
        // The thread needs the namespace path only: a Net is not shared.
        let ns = NetRef::of(net);
        let worker = Worker::spawn("lab-tool", move |stop| {
            let deadline = Instant::now() + duration;
            let mut proc = Some(first);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let done = proc.as_mut().is_none_or(|p| p.exited().is_some());
                if done {
                    drop(proc.take());
                    std::thread::sleep(Duration::from_millis(500));
                    match HostProc::spawn_in(&ns, &argv, &log) {
                        Ok(p) => {
                            runs2.fetch_add(1, Ordering::Relaxed);
                            proc = Some(p);
                        }
                        Err(e) => {
                            note(format!("could not restart `{}`: {e:#}", argv.join(" ")));
                            return;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Dropping `proc` kills the running one.
        })
        .context("could not start the tool thread")?;
        Ok(Repeater { runs, worker, what })
    }

    /// Stops the tool; returns how many times it was started.
    pub fn stop(mut self) -> u64 {
        self.worker.halt();
        self.runs.load(Ordering::Relaxed)
    }

    pub fn what(&self) -> &str {
        &self.what
    }
}

/// What a tool thread needs of the network (a `Net` stays with its owner).
struct NetRef {
    name: String,
    path: PathBuf,
}

impl NetRef {
    fn of(net: &Net) -> NetRef {
        NetRef {
            name: net.name().to_string(),
            path: net.path(),
        }
    }
}

/// The host-side web server the `-source` attacks aim at: busybox httpd on
/// 10.77.0.1:80 inside the namespace, with a page and an `/admin/` under basic
/// authentication (same user and password as the guest's).
pub struct TargetServer {
    _proc: HostProc,
    _dir: TempDir,
}

impl TargetServer {
    pub fn start(net: &Net, dir: PathBuf, user: &str, password: &str) -> Result<TargetServer> {
        let dir = TempDir::create(dir)?;
        let www = dir.0.join("www");
        fs::create_dir_all(www.join("admin"))?;
        fs::write(
            www.join("index.html"),
            "<html><body><h1>lab host</h1></body></html>\n",
        )?;
        fs::write(
            www.join("admin/index.html"),
            "<html><body><h1>admin</h1></body></html>\n",
        )?;
        let conf = dir.0.join("httpd.conf");
        fs::write(
            &conf,
            format!("/admin:{user}:{password}\n.html:text/html\n"),
        )?;
        let argv: Vec<String> = [
            "busybox",
            "httpd",
            "-f",
            "-p",
            &format!("{}:80", net::HOST_IP),
            "-h",
            &www.display().to_string(),
            "-c",
            &conf.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = HostProc::spawn(net, &argv, &dir.0.join("httpd.log"))?;
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = proc.exited() {
            bail!(
                "the host-side target web server `{}` exited at once ({status}); see {}",
                proc.what(),
                dir.0.join("httpd.log").display()
            );
        }
        note(format!(
            "host-side target: busybox httpd on http://{}:80/ (/admin/ with basic auth) in {}",
            net::HOST_IP,
            net.name()
        ));
        Ok(TargetServer {
            _proc: proc,
            _dir: dir,
        })
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn create(path: PathBuf) -> Result<TempDir> {
        fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
