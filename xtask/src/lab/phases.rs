//! Phased recordings (`lab record --phases NORMAL,ANOMALY`): one boot goes
//! through normal and anomalous phases in turn, and each window is labelled
//! by the phase it lies in. Normal phases run the `web` client load alone;
//! anomalous ones add the scenario's own parts (its guest side, switched on
//! and off through the serial console, and its host-side tool). So the
//! normal windows a detector is tested on come from the very boot of the
//! anomaly, and "anomalous" cannot mean "another boot".

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmwatch_core::dataset::{DatasetWriter, Row, Table};

use super::load::Rng;

/// Label of the windows of normal phases (the client load is `web`'s).
pub const NORMAL_LABEL: &str = "web";
/// Label of the windows that overlap a switch, or follow one by less than a
/// window: neither phase's.
pub const SWITCH_LABEL: &str = "switch";

/// The mean lengths of the phases; each phase's length is drawn from the
/// seed, uniformly within ±50% of its mean, so that anomalies do not begin
/// on a period a detector could learn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phases {
    pub normal: Duration,
    pub anomaly: Duration,
}

impl Phases {
    /// `NORMAL,ANOMALY` in seconds, e.g. `60,30`.
    pub fn parse(s: &str) -> Result<Phases> {
        let secs = |w: &str| -> Result<Duration> {
            let v: f64 = w
                .trim()
                .parse()
                .with_context(|| format!("`{w}` is not a number of seconds"))?;
            if !(v.is_finite() && (2.0..=86_400.0).contains(&v)) {
                bail!("a phase lasts 2 to 86400 seconds, not {w}");
            }
            Ok(Duration::from_secs_f64(v))
        };
        match s.split_once(',') {
            Some((n, a)) => Ok(Phases {
                normal: secs(n)?,
                anomaly: secs(a)?,
            }),
            None => bail!("--phases takes NORMAL,ANOMALY (seconds), e.g. 60,30; not `{s}`"),
        }
    }

    /// When the anomaly switches on and off over a recording of `total`,
    /// from its start: (offset, on), alternating, starting with on after a
    /// first normal phase.
    pub fn switches(&self, total: Duration, seed: u64) -> Vec<(Duration, bool)> {
        let mut rng = Rng::new(seed ^ 0x5048_4153_4553);
        let mut out = Vec::new();
        let mut at = Duration::ZERO;
        let mut on = false;
        loop {
            let mean = if on { self.anomaly } else { self.normal };
            at += mean.mul_f64(0.5 + rng.unit());
            if at >= total {
                return out;
            }
            on = !on;
            out.push((at, on));
        }
    }
}

/// A switch as it happened: the anomaly `on` or off, asked for at
/// `asked_ms` and carried out by `done_ms` (unix ms, the clock of the rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub on: bool,
    pub asked_ms: u64,
    pub done_ms: u64,
}

/// The label of the window starting at `start_ms` and lasting `len_ms`:
/// [`SWITCH_LABEL`] if a switch happened in it or ended less than `settle_ms`
/// before it (the guest's response to a switch takes a moment: a flood's
/// connections time out, a stress job's memory is freed), else the
/// phase's: `scenario` while the anomaly is on, [`NORMAL_LABEL`] otherwise.
pub fn label<'a>(
    start_ms: u64,
    len_ms: u64,
    switches: &[Switch],
    settle_ms: u64,
    scenario: &'a str,
) -> &'a str {
    let end = start_ms + len_ms;
    let mut on = false;
    for s in switches {
        if s.asked_ms < end && s.done_ms + settle_ms > start_ms {
            return SWITCH_LABEL;
        }
        if s.done_ms <= start_ms {
            on = s.on;
        }
    }
    if on {
        scenario
    } else {
        NORMAL_LABEL
    }
}

/// Rewrites the labels of the recording at `path` from `switches`
/// (atomically; every other cell as it was). Returns the windows per label.
pub fn relabel(
    path: &Path,
    switches: &[Switch],
    settle_ms: u64,
    scenario: &str,
) -> Result<Vec<(String, usize)>> {
    let table = Table::read(path)?;
    let mut w = DatasetWriter::create(path, &table.features, true)?;
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut row_counts = Vec::with_capacity(table.features.len());
    for (n, key) in table.keys.iter().enumerate() {
        let l = label(
            key.start_unix_ms,
            key.duration_ms,
            switches,
            settle_ms,
            scenario,
        );
        match counts.iter_mut().find(|(k, _)| k == l) {
            Some((_, c)) => *c += 1,
            None => counts.push((l.to_string(), 1)),
        }
        row_counts.clear();
        // Counts are written as integers: the f64 holds them exactly.
        row_counts.extend(table.x.row(n).iter().map(|&v| v as u64));
        let sampled: Vec<(usize, f64)> = key
            .sampled
            .iter()
            .map(|&(c, f)| (c, f64::from(f)))
            .collect();
        w.write_row(&Row {
            vm: &key.vm,
            pid: key.pid,
            label: l,
            window: key.window,
            start_unix_ms: key.start_unix_ms,
            duration_ms: key.duration_ms,
            qemu: key.qemu.as_deref(),
            counts: &row_counts,
            sampled: &sampled,
        })?;
    }
    w.finish()?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let p = Phases::parse("60,30").unwrap();
        assert_eq!(p.normal, Duration::from_secs(60));
        assert_eq!(p.anomaly, Duration::from_secs(30));
        for bad in ["60", "60,x", "1,30", "60,-3", ""] {
            assert!(Phases::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn switches_alternate_within_their_ranges_and_depend_on_the_seed() {
        let p = Phases::parse("60,30").unwrap();
        let total = Duration::from_secs(3600);
        let s = p.switches(total, 7);
        assert!(s.len() >= 40, "{} switches in an hour", s.len());
        assert!(s[0].1, "the first switch turns the anomaly on");
        let mut last = Duration::ZERO;
        for (i, &(at, on)) in s.iter().enumerate() {
            assert_eq!(on, i % 2 == 0);
            let len = (at - last).as_secs_f64();
            // The phase before this switch: normal before an on.
            let mean = if on { 60.0 } else { 30.0 };
            assert!(
                (0.5 * mean..=1.5 * mean).contains(&len),
                "phase {i}: {len}s"
            );
            last = at;
        }
        assert!(last < total);
        assert_ne!(s, p.switches(total, 8));
        assert_eq!(s, p.switches(total, 7));
    }

    #[test]
    fn windows_are_labelled_by_their_phase() {
        let sw = [
            Switch {
                on: true,
                asked_ms: 10_000,
                done_ms: 10_500,
            },
            Switch {
                on: false,
                asked_ms: 30_000,
                done_ms: 31_200,
            },
        ];
        let l = |start| label(start, 2000, &sw, 2000, "synflood-source");
        assert_eq!(l(0), NORMAL_LABEL);
        assert_eq!(l(8000), NORMAL_LABEL); // ends as the switch is asked
        assert_eq!(l(8001), SWITCH_LABEL);
        assert_eq!(l(12_000), SWITCH_LABEL); // within the settle time
        assert_eq!(l(12_500), "synflood-source");
        assert_eq!(l(27_900), "synflood-source");
        assert_eq!(l(28_500), SWITCH_LABEL);
        assert_eq!(l(33_000), SWITCH_LABEL);
        assert_eq!(l(33_200), NORMAL_LABEL);
        assert_eq!(label(0, 2000, &[], 2000, "x"), NORMAL_LABEL);
    }
}
