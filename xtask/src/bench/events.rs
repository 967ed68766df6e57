//! Per-event cost: a small C program fires one trace point N times the way
//! QEMU's `dtrace,ust` build does (USDT probe behind its semaphore, LTTng-UST
//! tracepoint behind its enabled flag), detached, counted by vmwatch, and
//! recorded by LTTng-UST. Built with cc at bench time (liblttng-ust-dev).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::lttng::{Events, TraceOpts, Tracing};
use super::monitor::{Config, Running, Setup};
use super::Run as Opts;
use crate::util::{self, note};

const LOOP_C: &str = include_str!("c/loop.c");
const TP_C: &str = include_str!("c/tp.c");
const TP_H: &str = include_str!("c/tp.h");

/// One measurement.
#[derive(Debug, Clone)]
pub struct Row {
    pub state: &'static str,
    pub rep: usize,
    pub n: u64,
    pub ns_per_event: f64,
    /// LTTng: events found in the trace (the rest were discarded).
    pub recorded: Option<u64>,
}

pub const CSV_HEADER: &str = "state,rep,events,ns_per_event,recorded";

/// The running loop program (killed on drop).
struct Loop {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Loop {
    fn start(bin: &Path) -> Result<Loop> {
        let (child, stdin, stdout) = super::spawn_piped(bin)?;
        let mut l = Loop {
            child,
            stdin,
            stdout,
        };
        let first = l.line()?;
        if !first.starts_with("ready") {
            bail!("unexpected first line from the loop program: {first}");
        }
        Ok(l)
    }

    fn line(&mut self) -> Result<String> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            bail!("the loop program exited");
        }
        Ok(s.trim().to_string())
    }

    fn ask(&mut self, cmd: &str) -> Result<String> {
        writeln!(self.stdin, "{cmd}")?;
        self.line()
    }

    /// (USDT semaphore, LTTng tracepoint enabled).
    fn state(&mut self) -> Result<(u32, bool)> {
        let l = self.ask("state")?;
        let w: Vec<&str> = l.split_whitespace().collect();
        match w[..] {
            ["state", sem, lt] => Ok((sem.parse()?, lt == "1")),
            _ => bail!("unexpected answer {l:?}"),
        }
    }

    fn wait_state(&mut self, want: (bool, bool)) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (sem, lt) = self.state()?;
            if (sem > 0, lt) == want {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("the loop program's probe state stayed (semaphore {sem}, LTTng {lt}); expected {want:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// ns per event over `n` events.
    fn run(&mut self, n: u64) -> Result<f64> {
        let l = self.ask(&format!("run {n}"))?;
        let w: Vec<&str> = l.split_whitespace().collect();
        match w[..] {
            ["ns", total, _] => Ok(total.parse::<f64>()? / n as f64),
            _ => bail!("unexpected answer {l:?}"),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Compiles the loop program into `dir` (`name`, with extra cc flags).
fn build(dir: &Path, name: &str, flags: &[&str]) -> Result<std::path::PathBuf> {
    for (file, text) in [("loop.c", LOOP_C), ("tp.c", TP_C), ("tp.h", TP_H)] {
        fs::write(dir.join(file), text)?;
    }
    let bin = dir.join(name);
    util::run(
        Command::new("cc")
            .current_dir(dir)
            .args(["-O2", "-I."])
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .args(["loop.c", "tp.c", "-llttng-ust", "-ldl"]),
    )
    .context("compiling the per-event test program failed (apt-get install liblttng-ust-dev systemtap-sdt-dev)")?;
    Ok(bin)
}

/// Events in a finished trace directory (babeltrace2's counter sink).
fn count_events(dir: &Path) -> Result<u64> {
    let out = util::output(
        Command::new("babeltrace2")
            .arg(dir)
            .args(["-c", "sink.utils.counter"]),
    )?;
    // The counter prints running totals; the last one is the total.
    out.lines()
        .rfind(|l| l.contains("Event messages"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .context("babeltrace2's counter printed no event count")
}

pub fn run(o: &Opts, setup: &Setup, csv: &Path) -> Result<Vec<Row>> {
    let d = setup
        .sessiond
        .as_ref()
        .context("the per-event test needs the session daemon")?;
    let dir = setup.tmp.join("events");
    fs::create_dir_all(&dir)?;
    let bin = build(&dir, "bench-loop", &[])?;
    let bin5 = build(&dir, "bench-loop-nop5", &["-DBENCH_NOP5"])?;
    let mut lp = Loop::start(&bin)?;
    let mut lp5 = Loop::start(&bin5)?;
    let pid = lp.child.id();
    // Events per run: enough for ~0.2-1 s in each state.
    let scale = if o.quick { 10 } else { 1 };
    let (n_off, n_vmwatch, n_lttng) = (20_000_000 / scale, 500_000 / scale, 500_000 / scale);
    let mut rows = Vec::new();
    for rep in 0..o.reps {
        let row = |state, n, ns_per_event, recorded| Row {
            state,
            rep,
            n,
            ns_per_event,
            recorded,
        };
        lp.wait_state((false, false))?;
        rows.push(row("detached", n_off, lp.run(n_off)?, None));
        let ns = counted(setup, &mut lp, &format!("events-{rep}"), n_vmwatch)?;
        rows.push(row("vmwatch", n_vmwatch, ns, None));
        let ns = counted(setup, &mut lp5, &format!("events5-{rep}"), n_vmwatch)?;
        rows.push(row("vmwatch-nop5", n_vmwatch, ns, None));
        {
            let out = setup.tmp.join(format!("events-trace-{rep}"));
            let _ = fs::remove_dir_all(&out);
            let t = Tracing::start(
                d,
                TraceOpts {
                    name: &format!("vmwatch-bench-events-{rep}"),
                    out: out.clone(),
                    events: Events::List(vec!["qemu:bench_event".into()]),
                    pids: &[pid],
                    rotate: None,
                    subbuf: "4M",
                    num_subbuf: 8,
                },
            )?;
            lp.wait_state((false, true))?;
            let ns = lp.run(n_lttng)?;
            util::output(
                t.daemon()
                    .lttng()
                    .args(["stop", &format!("vmwatch-bench-events-{rep}")]),
            )?;
            let recorded = count_events(&out).ok();
            t.finish()?;
            rows.push(row("lttng", n_lttng, ns, recorded));
        }
        let last = &rows[rows.len() - 4..];
        note(format!(
            "events rep {}: detached {:.1} ns, vmwatch {:.1} ns (5-byte nop site: {:.1} ns), LTTng-UST {:.1} ns per event (LTTng recorded {} of {})",
            rep + 1,
            last[0].ns_per_event,
            last[1].ns_per_event,
            last[2].ns_per_event,
            last[3].ns_per_event,
            last[3].recorded.map_or("?".into(), |r| r.to_string()),
            n_lttng
        ));
        write_csv(csv, &rows)?;
    }
    Ok(rows)
}

/// ns per event of `lp` over `n` events while vmwatch counts its probe
/// (`tag` names vmwatch's output).
fn counted(setup: &Setup, lp: &mut Loop, tag: &str, n: u64) -> Result<f64> {
    let m = Running::start(setup, Config::VmwatchAll, &[lp.child.id()], tag)?;
    lp.wait_state((true, false))?;
    let ns = lp.run(n)?;
    m.stop()?;
    Ok(ns)
}

fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut s = format!("{CSV_HEADER}\n");
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{:.2},{}\n",
            r.state,
            r.rep,
            r.n,
            r.ns_per_event,
            r.recorded.map_or(String::new(), |v| v.to_string())
        ));
    }
    util::write_atomic(path, s.as_bytes())
}
