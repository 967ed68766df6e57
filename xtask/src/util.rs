//! Small helpers shared by the subcommands: running commands, locating and
//! updating the cache, cleaning up after killed runs, formatting times.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// Prefix of every progress line xtask prints (on stderr).
pub fn note(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

/// A shell-like rendering of a command, for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![shell_word(cmd.get_program())];
    parts.extend(cmd.get_args().map(shell_word));
    parts.join(" ")
}

fn shell_word(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a command with its stdout sent to our stderr (stdout is kept for results,
/// e.g. `cargo xtask qemu --print-path`); fails unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.stdout(std::io::stderr());
    run_inherit(cmd)
}

/// Runs a command with inherited stdio; fails unless it exits with status 0.
pub fn run_inherit(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    note(format!("$ {shown}"));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; on failure the error carries stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{shown}` failed ({}): {}", out.status, stderr.trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 output"))
}

/// How much of a long-running command's output reaches the terminal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Every line.
    All,
    /// Every line, except ninja's `[n/m] …` step lines: those are thinned out to one
    /// per 5 % of the build or per 30 s, whichever comes first.
    NinjaProgress,
}

/// Runs a command with stdout and stderr merged, appending every line to `log` and
/// echoing lines to stderr as `echo` says. Fails unless the command exits with 0.
pub fn run_logged(cmd: &mut Command, log: &mut fs::File, echo: Echo) -> Result<()> {
    let shown = display(cmd);
    note(format!("$ {shown}"));
    writeln!(log, "$ {shown}").context("could not write the build log")?;
    let (reader, writer) = std::io::pipe().context("could not create a pipe")?;
    let writer2 = writer.try_clone().context("could not duplicate a pipe")?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    // The Command still holds the write ends; replace them so that EOF arrives when
    // the child exits.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());

    let mut progress = NinjaThinner::new();
    for line in BufReader::new(reader).split(b'\n') {
        let line = line.with_context(|| format!("could not read the output of `{shown}`"))?;
        let line = String::from_utf8_lossy(&line);
        writeln!(log, "{line}").context("could not write the build log")?;
        let show = match echo {
            Echo::All => true,
            Echo::NinjaProgress => progress.should_show(&line),
        };
        if show {
            eprintln!("{line}");
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("could not wait for `{shown}`"))?;
    log.flush().context("could not write the build log")?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

struct NinjaThinner {
    last_pct: Option<u64>,
    last_time: Instant,
}

impl NinjaThinner {
    fn new() -> Self {
        NinjaThinner {
            last_pct: None,
            last_time: Instant::now(),
        }
    }

    fn should_show(&mut self, line: &str) -> bool {
        let Some((done, total)) = parse_ninja_step(line) else {
            return true;
        };
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        let due = match self.last_pct {
            None => true,
            Some(last) => pct >= last + 5 || self.last_time.elapsed() >= Duration::from_secs(30),
        };
        if due || done == total {
            self.last_pct = Some(pct);
            self.last_time = Instant::now();
            return true;
        }
        false
    }
}

/// `[123/4567] Compiling …` → `(123, 4567)`.
fn parse_ninja_step(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix('[')?;
    let (inner, _) = rest.split_once(']')?;
    let (done, total) = inner.split_once('/')?;
    Some((done.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// Makes `cmd`'s process get `signal` when the xtask thread that starts it
/// dies (`PR_SET_PDEATHSIG`), and exit at once if xtask died before that
/// took effect.
pub fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and _exit are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Whether process `pid` runs.
pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The pid in a name `<prefix><pid>-<n>`, how xtask names what it leaves in
/// shared places (`host-4242-0` with prefix `host-`).
pub fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(prefix)?.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes what a killed xtask left in `dir`: the entries whose name `owner`
/// maps to a pid that no longer runs.
pub fn remove_orphans(dir: &Path, owner: impl Fn(&str) -> Option<u32>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if owner(&name).is_some_and(|pid| !pid_alive(pid)) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Drops terminal escape sequences and control characters from console
/// output; tabs become spaces, line breaks stay.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(' '),
            '\n' => out.push('\n'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A thread that runs until told to stop: [`Worker::halt`] or dropping it
/// sets its flag and waits for it to end.
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts thread `name` running `f`, which returns soon after the flag
    /// it is given is set.
    pub fn spawn(
        name: &str,
        f: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(&flag))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Tells the thread to stop and waits for it.
    pub fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.halt();
    }
}

/// True when running as root (`id -u` prints 0).
pub fn is_root() -> Result<bool> {
    let uid = output(Command::new("id").arg("-u")).context("could not find the user id")?;
    Ok(uid.trim() == "0")
}

/// The cache directory shared by xtask commands: `$VMWATCH_CACHE`, else
/// `$XDG_CACHE_HOME/vmwatch`, else `$HOME/.cache/vmwatch`.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("VMWATCH_CACHE") {
        let dir = PathBuf::from(dir);
        if dir.is_relative() {
            let cwd = std::env::current_dir().context("could not read the current directory")?;
            return Ok(cwd.join(dir));
        }
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME").map(PathBuf::from) {
        // The XDG spec says to ignore a relative XDG_CACHE_HOME.
        if dir.is_absolute() {
            return Ok(dir.join("vmwatch"));
        }
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("vmwatch")),
        None => bail!(
            "cannot choose a cache directory: none of VMWATCH_CACHE, XDG_CACHE_HOME and HOME is set"
        ),
    }
}

/// Takes `<root>/.lock`, the lock of a cache directory's builds; while
/// another process holds it, says `busy` and waits. Held until dropped.
pub fn lock_cache(root: &Path, busy: &str) -> Result<fs::File> {
    let lock_path = root.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("could not open the lock file {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        note(format!("{busy}; waiting for it to finish"));
        lock.lock()
            .with_context(|| format!("could not lock {}", lock_path.display()))?;
    }
    Ok(lock)
}

/// A build in progress in a cache directory: assembled in
/// `<root>/.work-<hash>/out` and renamed to `<root>/<hash>` once complete,
/// so an interrupted build never looks complete.
pub struct CacheBuild {
    /// Where the finished build goes.
    pub final_dir: PathBuf,
    /// The work directory (the next attempt removes what a failed one left).
    pub work: PathBuf,
    /// The build itself, inside `work`.
    pub out: PathBuf,
    /// `out/build.log`.
    pub log_path: PathBuf,
    pub log: fs::File,
}

impl CacheBuild {
    /// Starts `<root>/<hash>` afresh: an empty work directory and build log.
    pub fn start(root: &Path, hash: &str) -> Result<CacheBuild> {
        let work = root.join(format!(".work-{hash}"));
        remove_dir_if_exists(&work)?;
        let out = work.join("out");
        fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;
        let log_path = out.join("build.log");
        let log = fs::File::create(&log_path)
            .with_context(|| format!("could not create the build log {}", log_path.display()))?;
        Ok(CacheBuild {
            final_dir: root.join(hash),
            work,
            out,
            log_path,
            log,
        })
    }

    /// Writes `files` (name, contents) into the build in order, the
    /// completion marker last; then moves the build to its final place and
    /// removes the work directory. An incomplete directory of the same hash
    /// (from an older layout or a crash after the rename of a forced
    /// rebuild) is replaced.
    pub fn finish(self, files: &[(&str, &str)]) -> Result<()> {
        for (name, text) in files {
            let path = self.out.join(name);
            fs::write(&path, text)
                .with_context(|| format!("could not write {}", path.display()))?;
        }
        remove_dir_if_exists(&self.final_dir)?;
        fs::rename(&self.out, &self.final_dir).with_context(|| {
            format!(
                "could not move the finished build {} to {}",
                self.out.display(),
                self.final_dir.display()
            )
        })?;
        remove_dir_if_exists(&self.work)
    }
}

/// Points `<root>/current` at `<hash>` (atomically: new symlink, then rename).
pub fn set_current(root: &Path, hash: &str) -> Result<()> {
    set_link(root, "current", hash)
}

/// Points `<root>/<name>` at `<hash>` (atomically: new symlink, then rename).
pub fn set_link(root: &Path, name: &str, hash: &str) -> Result<()> {
    let link = root.join(name);
    if fs::read_link(&link).ok().as_deref() == Some(Path::new(hash)) {
        return Ok(());
    }
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(hash, &tmp)
        .with_context(|| format!("could not create the symlink {}", tmp.display()))?;
    fs::rename(&tmp, &link).with_context(|| format!("could not update {}", link.display()))
}

/// Removes `dir` and what it holds; nothing there is not an error.
pub fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("could not remove {}", dir.display())),
    }
}

/// The repository root (the parent of the xtask crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Writes a file atomically: a temporary file in the same directory, then rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    fs::write(&tmp, contents).with_context(|| format!("could not write {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("could not rename {} to {}", tmp.display(), path.display()))
}

/// Milliseconds since the Unix epoch (the clock of vmwatch's rows).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `12m34s` style duration.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Minimal JSON string escaping.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn ninja_steps() {
        assert_eq!(parse_ninja_step("[12/345] Compiling C"), Some((12, 345)));
        assert_eq!(parse_ninja_step("FAILED: foo.o"), None);
        assert_eq!(parse_ninja_step("[x/y]"), None);
    }

    #[test]
    fn console_cleanup() {
        assert_eq!(printable("\u{1b}[2Jready\r"), "ready");
        assert_eq!(printable("a\tb"), "a b");
        assert_eq!(
            printable("\u{1b}[2J\u{1b}[01;01HSeaBIOS (v)\r\n"),
            "SeaBIOS (v)\n"
        );
    }

    #[test]
    fn owners() {
        assert_eq!(owner_pid("host-4242-0", "host-"), Some(4242));
        assert_eq!(owner_pid("host-4242", "host-"), None);
        assert_eq!(owner_pid("host-x-0", "host-"), None);
        assert_eq!(owner_pid("run-lab-idle-4242-0", "host-"), None);
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_str("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }
}
