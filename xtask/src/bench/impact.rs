//! Fig. 6: the monitored VM's own performance. One lab guest (scenario
//! `bench`, see guest/init.sh) runs a fixed CPU job and a fixed database job
//! round after round and times them with its own clock; between rounds the
//! host switches to the next monitoring configuration. Configurations are
//! interleaved (one round each, in an order rotated every repetition), so
//! slow drifts of the host hit every configuration alike.

use std::fs;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::monitor::{Config, Running, Setup};
use super::{Run as Opts, BENCH};
use crate::lab::record::{Session, SessionOpts};
use crate::lab::vm::{self, Accel};
use crate::qemu;
use crate::util::note;

/// One job run.
#[derive(Debug, Clone)]
pub struct Row {
    pub config: Config,
    pub rep: usize,
    pub round: u64,
    pub job: String,
    pub seconds: f64,
    pub hits_per_window: f64,
    pub discarded: u64,
    pub windows: u64,
    pub counted: u64,
}

/// Job sizes: (gap s, CPU job ops, database job transactions).
fn sizes(quick: bool) -> (u32, u32, u32) {
    if quick {
        (3, 40, 20)
    } else {
        (3, 2000, 300)
    }
}

/// A line of the guest's bench protocol.
#[derive(Debug, PartialEq)]
enum Line {
    Wait(u64),
    Start(u64),
    Result {
        round: u64,
        job: String,
        ns: u64,
        ok: bool,
    },
}

fn parse_line(line: &str) -> Option<Line> {
    let rest = &line[line.find("VMWATCH-BENCH ")? + "VMWATCH-BENCH ".len()..];
    let mut words = rest.split_whitespace();
    let kind = words.next()?;
    let field = |key: &str| -> Option<String> {
        words
            .clone()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
    };
    let round = field("round")?.parse().ok()?;
    match kind {
        "wait" => Some(Line::Wait(round)),
        "start" => Some(Line::Start(round)),
        "result" => Some(Line::Result {
            round,
            job: field("job")?,
            ns: field("ns")?.parse().ok()?,
            ok: field("status")? == "0",
        }),
        _ => None,
    }
}

/// Follows the serial console log for bench lines.
struct Console {
    reader: BufReader<fs::File>,
    partial: String,
}

impl Console {
    fn open(path: &std::path::Path) -> Result<Console> {
        let mut f =
            fs::File::open(path).with_context(|| format!("could not open {}", path.display()))?;
        f.seek(SeekFrom::End(0))?;
        Ok(Console {
            reader: BufReader::new(f),
            partial: String::new(),
        })
    }

    /// The next bench line, and whether it had to be waited for (false: it
    /// was in the log already when we asked).
    fn next(&mut self, session: &mut Session, timeout: Duration) -> Result<(Line, bool)> {
        let until = Instant::now() + timeout;
        let mut waited = false;
        loop {
            let mut buf = String::new();
            let n = self.reader.read_line(&mut buf)?;
            if n > 0 {
                self.partial.push_str(&buf);
                if !self.partial.ends_with('\n') {
                    continue;
                }
                let line = std::mem::take(&mut self.partial);
                if line.contains("VMWATCH-BENCH error") {
                    bail!("the guest's bench failed: {}", line.trim());
                }
                if let Some(l) = parse_line(&line) {
                    return Ok((l, waited));
                }
                continue;
            }
            session.check()?;
            vm::check_interrupted()?;
            if Instant::now() > until {
                bail!("no bench line from the guest within {}s", timeout.as_secs());
            }
            waited = true;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs the impact part; returns one row per job run.
pub fn run(o: &Opts, setup: &Setup, out_csv: &Path) -> Result<Vec<Row>> {
    let (gap, cpu_ops, db_tx) = sizes(o.quick);
    let mut session = Session::start(&SessionOpts {
        scenario: &BENCH,
        vms: 1,
        seed: 1,
        qemu: qemu::Variant::default(),
        accel: Accel::Tcg,
        memory_mib: 512,
        boot_timeout: Duration::from_secs(180),
        duration: Duration::from_secs(24 * 3600),
        kernel_args: vec![
            format!("vmwatch.bench_gap={gap}"),
            format!("vmwatch.bench_cpu={cpu_ops}"),
            format!("vmwatch.bench_db={db_tx}"),
        ],
        network: false,
        phased: false,
    })?;
    let pid = session.pids()[0];
    super::check_lttng_registered(setup, pid)?;
    let mut console = Console::open(session.vms_mut()[0].console_log())?;

    // Round 0 warms the guest up (page cache, database file) and is dropped.
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|c| setup.applies(*c))
        .collect();
    let mut schedule: Vec<(Config, usize)> = vec![(Config::None, usize::MAX)];
    for rep in 0..o.reps {
        let n = configs.len();
        for i in 0..n {
            schedule.push((configs[(i + rep) % n], rep));
        }
    }
    let total = schedule.len() - 2;
    note(format!(
        "impact: {} configurations x {} repetitions, interleaved; CPU job {cpu_ops} prime ops, database job {db_tx} transactions, {gap} s between rounds",
        configs.len(),
        o.reps
    ));
    let mut rows = Vec::new();
    let mut k = 0;
    let started = Instant::now();
    let job_timeout = Duration::from_secs(600);
    while k < schedule.len() {
        let (config, rep) = schedule[k];
        // The guest announces a round, then sleeps `gap` seconds.
        let round = loop {
            if let (Line::Wait(r), _) = console.next(&mut session, job_timeout)? {
                break r;
            }
        };
        let monitor = Running::start(setup, config, &[pid], &format!("impact-{round}"))?;
        // The round counts only if the monitor was up before the guest started.
        let (line, in_time) = console.next(&mut session, job_timeout)?;
        if line != Line::Start(round) {
            bail!("unexpected guest line {line:?} (expected the start of round {round})");
        }
        let mut results = Vec::new();
        while results.len() < 2 {
            if let (
                Line::Result {
                    round: r,
                    job,
                    ns,
                    ok,
                },
                _,
            ) = console.next(&mut session, job_timeout)?
            {
                if r != round {
                    bail!("result of round {r} during round {round}");
                }
                if !ok {
                    bail!("the guest's {job} job failed in round {round}");
                }
                results.push((job, ns));
            }
        }
        let stopped = monitor.stop()?;
        if !in_time {
            note(format!(
                "round {round}: {} was not ready before the guest started; repeating it",
                config.id()
            ));
            schedule.push((config, rep));
            k += 1;
            continue;
        }
        if rep != usize::MAX {
            let times: Vec<String> = results
                .iter()
                .map(|(j, ns)| format!("{j} {:.2}s", *ns as f64 / 1e9))
                .collect();
            note(format!(
                "impact {}/{total} ({}): {:<20} {}",
                rows.len() / 2 + 1,
                crate::util::human_duration(started.elapsed()),
                config.id(),
                times.join(", ")
            ));
            for (job, ns) in results {
                rows.push(Row {
                    config,
                    rep,
                    round,
                    job,
                    seconds: ns as f64 / 1e9,
                    hits_per_window: stopped.hits_per_vm_window,
                    discarded: stopped.discarded,
                    windows: stopped.windows,
                    counted: stopped.counted,
                });
            }
            write_csv(out_csv, &rows)?;
        }
        k += 1;
    }
    session.finish()?;
    Ok(rows)
}

pub const CSV_HEADER: &str =
    "config,rep,round,job,seconds,hits_per_window,lttng_discarded,windows,windows_counted";

fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{:.4},{:.1},{},{},{}\n",
            r.config.id(),
            r.rep,
            r.round,
            r.job,
            r.seconds,
            r.hits_per_window,
            r.discarded,
            r.windows,
            r.counted
        ));
    }
    crate::util::write_atomic(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_lines() {
        assert_eq!(
            parse_line("VMWATCH-BENCH wait round=3"),
            Some(Line::Wait(3))
        );
        assert_eq!(
            parse_line("x VMWATCH-BENCH result round=2 job=db ns=5123456789 status=0"),
            Some(Line::Result {
                round: 2,
                job: "db".into(),
                ns: 5_123_456_789,
                ok: true
            })
        );
        assert_eq!(parse_line("VMWATCH-READY scenario=bench"), None);
    }
}
