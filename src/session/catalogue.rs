//! The feature catalogue: which features exist for the targets (every
//! `qemu` probe of their binaries, every syscall of the architecture, every
//! KVM tracepoint of the kernel, the software performance counters, and the
//! transitions between two probes of their binaries, which are counted
//! only when named) and which of them a session counts.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use vmwatch_core::error::shown;
use vmwatch_core::features::{self, Columns, Feature, Source};

use crate::discover::kvm::{self, KvmEvents};
use crate::discover::stapsdt::UsdtBinary;
use crate::error::{Error, Result};

/// What `--source` names for counting: a feature namespace, or `strace`, the
/// paper's syscall baseline, which counts `sys:` features with the real
/// `strace -c -f` instead of BPF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountSource {
    Qemu,
    Syscalls,
    Kvm,
    Perf,
    Seq,
    Arg,
    Strace,
}

impl FromStr for CountSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu" => Ok(CountSource::Qemu),
            "syscalls" => Ok(CountSource::Syscalls),
            "kvm" => Ok(CountSource::Kvm),
            "perf" => Ok(CountSource::Perf),
            "seq" => Ok(CountSource::Seq),
            "arg" => Ok(CountSource::Arg),
            "strace" => Ok(CountSource::Strace),
            other => Err(format!(
                "unknown source `{other}` (sources: qemu, syscalls, kvm, perf, seq, arg, strace)"
            )),
        }
    }
}

/// What counts the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The BPF collector.
    Bpf,
    /// `strace -c -f`, for comparison only.
    Strace,
}

/// The namespaces to count and the backend: the given `--source` list,
/// else the sources of the requested features, else QEMU probes; `seq`
/// too when probes are tracked (`--track`).
pub fn plan(
    sources: &[CountSource],
    requested: Option<&[String]>,
    tracks: bool,
) -> Result<(Vec<Source>, Backend)> {
    if sources.contains(&CountSource::Strace) {
        if sources.len() > 1 || tracks {
            return Err(Error::Invalid(
                "--source strace is a comparison baseline and cannot be combined with other sources"
                    .into(),
            ));
        }
        return Ok((vec![Source::Syscalls], Backend::Strace));
    }
    let mut out: Vec<Source> = if sources.is_empty() {
        requested
            .into_iter()
            .flatten()
            .filter_map(|f| Source::of(f))
            .collect()
    } else {
        sources
            .iter()
            .map(|s| match s {
                CountSource::Qemu => Source::Qemu,
                CountSource::Syscalls | CountSource::Strace => Source::Syscalls,
                CountSource::Kvm => Source::Kvm,
                CountSource::Perf => Source::Perf,
                CountSource::Seq => Source::Seq,
                CountSource::Arg => Source::Arg,
            })
            .collect()
    };
    if out.is_empty() {
        out.push(Source::Qemu);
    }
    if tracks {
        if !sources.is_empty() && !sources.contains(&CountSource::Seq) {
            return Err(Error::Invalid(
                "--track names probes whose transitions seq: features count: add seq to --source"
                    .into(),
            ));
        }
        out.push(Source::Seq);
    }
    out.sort();
    out.dedup();
    Ok((out, Backend::Bpf))
}

/// Every feature of `sources` for targets running `binaries`, in column
/// order: probes by name, then syscalls in the architecture's order, then
/// KVM tracepoints and exit reasons, then the perf events, then the
/// argument buckets of the probes the binaries have. Also the KVM
/// events, when discovered. `seq:` features are not listed: they exist
/// for any two probes of [`probe_names`] and are counted only when named.
pub fn available(
    sources: &[Source],
    binaries: &HashMap<(u64, u64), Arc<UsdtBinary>>,
) -> Result<(Vec<Feature>, Option<KvmEvents>)> {
    let mut out = Vec::new();
    if sources.contains(&Source::Qemu) {
        let probes: BTreeSet<&str> = binaries
            .values()
            .flat_map(|b| b.provider_sites("qemu").map(|s| s.name.as_str()))
            .collect();
        out.extend(probes.into_iter().map(|p| Feature::Probe(p.to_string())));
    }
    if sources.contains(&Source::Syscalls) {
        out.extend(features::syscall_features());
    }
    let kvm = if sources.contains(&Source::Kvm) {
        let events = kvm::discover()?;
        out.extend(events.features());
        Some(events)
    } else {
        None
    };
    if sources.contains(&Source::Perf) {
        out.extend(features::perf_features());
    }
    if sources.contains(&Source::Arg) {
        // The families of probes some binary has.
        let probes = probe_names(binaries);
        out.extend(features::arg_features().filter(|f| match f {
            Feature::Arg(a) => probes.contains(a.family().probe),
            _ => false,
        }));
    }
    Ok((out, kvm))
}

/// The `qemu` probes of `binaries`, by name.
pub fn probe_names(binaries: &HashMap<(u64, u64), Arc<UsdtBinary>>) -> BTreeSet<String> {
    binaries
        .values()
        .flat_map(|b| b.provider_sites("qemu").map(|s| s.name.clone()))
        .collect()
}

/// The columns to count: every available feature, or the requested ones
/// that exist here, in the requested order (those that do not exist are
/// reported and stay zero). A `seq:` feature exists when both its probes
/// are among `probes`. With `probes_as_requested`, requested probes and
/// transitions are columns whether or not a binary seen so far has them:
/// QEMU processes that start later may. Every transition among the
/// `tracked` probes is a column too, after the others.
pub fn choose(
    available: Vec<Feature>,
    probes: &BTreeSet<String>,
    requested: Option<&[String]>,
    sources: &[Source],
    probes_as_requested: bool,
    tracked: &[String],
) -> Result<Columns> {
    let absent: Vec<&String> = tracked
        .iter()
        .filter(|p| !probes_as_requested && !probes.contains(*p))
        .collect();
    if !absent.is_empty() {
        tracing::warn!(
            "{} tracked probe(s) no QEMU here has; their transitions are not counted: {}",
            absent.len(),
            absent
                .iter()
                .map(|p| shown(p))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let transitions: Vec<Feature> = features::transitions(tracked)?
        .into_iter()
        .filter(|f| match f {
            Feature::Seq { from, to } => !absent.contains(&from) && !absent.contains(&to),
            _ => false,
        })
        .collect();
    let Some(wanted) = requested else {
        if sources.contains(&Source::Seq) && tracked.is_empty() {
            return Err(Error::Invalid(
                "--source seq counts only the transitions of tracked probes (--track A,B,...) or \
                 those a feature list names (--probes FILE, e.g. a line \
                 `seq:virtqueue_fill>virtio_notify`): there are millions of probe pairs"
                    .into(),
            ));
        }
        return Ok(Columns::new(available.into_iter().chain(transitions)));
    };
    let have: std::collections::HashSet<&Feature> = available.iter().collect();
    let exists = |f: &Feature| match f {
        Feature::Seq { from, to } => probes.contains(from) && probes.contains(to),
        f => have.contains(f),
    };
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for name in wanted {
        let source = Source::of(name).ok_or_else(|| {
            Error::Invalid(format!(
                "feature `{}` belongs to no source vmwatch collects (qemu:, sys:, kvm:, perf:, \
                 seq:, arg:)",
                shown(name)
            ))
        })?;
        if !sources.contains(&source) {
            return Err(Error::Invalid(format!(
                "feature `{}` needs --source {}",
                shown(name),
                source.name()
            )));
        }
        // A syscall this architecture lacks is missing like any other; a
        // malformed transition is an error, not a column of zeros.
        match Feature::from_str(name) {
            Ok(f) if exists(&f) => present.push(f),
            Ok(f @ (Feature::Probe(_) | Feature::Seq { .. } | Feature::Arg(_)))
                if probes_as_requested =>
            {
                present.push(f)
            }
            Err(e) if source == Source::Seq || source == Source::Arg => return Err(e.into()),
            _ => missing.push(name.as_str()),
        }
    }
    if !missing.is_empty() {
        tracing::warn!(
            "{} requested feature(s) do not exist here and stay zero: {}",
            missing.len(),
            missing.join(", ")
        );
    }
    // Columns keep their first place: a named transition stays where the
    // list put it.
    present.extend(transitions);
    if present.is_empty() {
        return Err(Error::Invalid(
            "none of the requested features exists for these targets".into(),
        ));
    }
    Ok(Columns::new(present))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_is_a_source_of_its_own_and_implied_by_its_features() {
        let (s, b) = plan(&[CountSource::Perf, CountSource::Qemu], None, false).unwrap();
        assert_eq!((s, b), (vec![Source::Qemu, Source::Perf], Backend::Bpf));
        let wanted = ["perf:page_faults".to_string()];
        let (s, _) = plan(&[], Some(&wanted), false).unwrap();
        assert_eq!(s, [Source::Perf]);
        assert_eq!(
            plan(&[], None, false).unwrap().0,
            [Source::Qemu],
            "the default"
        );
        assert!(plan(&[CountSource::Strace, CountSource::Perf], None, false).is_err());
        assert_eq!("perf".parse::<CountSource>(), Ok(CountSource::Perf));
        let (all, kvm) = available(&[Source::Perf], &HashMap::new()).unwrap();
        assert!(kvm.is_none());
        assert_eq!(all, features::perf_features().collect::<Vec<_>>());
        let none = BTreeSet::new();
        let cols = choose(
            all.clone(),
            &none,
            Some(&wanted),
            &[Source::Perf],
            false,
            &[],
        )
        .unwrap();
        assert_eq!(cols.names(), ["perf:page_faults"]);
        let err = choose(all, &none, Some(&wanted), &[Source::Qemu], false, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "feature `perf:page_faults` needs --source perf"
        );
    }

    #[test]
    fn seq_is_a_source_of_its_own_counted_only_when_named() {
        let wanted: Vec<String> = ["qemu:a", "seq:a>b", "seq:b>c", "seq:a>a"]
            .map(String::from)
            .to_vec();
        let (s, _) = plan(&[], Some(&wanted), false).unwrap();
        assert_eq!(s, [Source::Qemu, Source::Seq]);
        assert_eq!("seq".parse::<CountSource>(), Ok(CountSource::Seq));
        let probes: BTreeSet<String> = ["a", "b"].map(String::from).into();
        let all = vec![Feature::Probe("a".into()), Feature::Probe("b".into())];
        // `seq:b>c` names a probe no binary has: missing, zero.
        let cols = choose(all.clone(), &probes, Some(&wanted), &s, false, &[]).unwrap();
        assert_eq!(cols.names(), ["qemu:a", "seq:a>b", "seq:a>a"]);
        // A VM that starts later may have it.
        let cols = choose(all.clone(), &probes, Some(&wanted), &s, true, &[]).unwrap();
        assert_eq!(cols.len(), 4);
        // Never part of "every feature".
        let (s, _) = plan(&[CountSource::Qemu, CountSource::Seq], None, false).unwrap();
        let err = choose(all.clone(), &probes, None, &s, false, &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--source seq counts only the transitions of tracked probes"),
            "{err}"
        );
        let err = choose(
            all.clone(),
            &probes,
            Some(&wanted),
            &[Source::Qemu],
            false,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "feature `seq:a>b` needs --source seq");
        // A malformed transition is refused, not a column of zeros.
        let bad = ["seq:a>b>c".to_string()];
        let err = choose(all, &probes, Some(&bad), &[Source::Seq], true, &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("feature `seq:a>b>c` is not a transition between two QEMU probes"),
            "{err}"
        );
    }

    #[test]
    fn tracked_probes_add_every_transition_among_them() {
        let track: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let (s, b) = plan(&[], None, true).unwrap();
        assert_eq!(
            (s.clone(), b),
            (vec![Source::Qemu, Source::Seq], Backend::Bpf)
        );
        assert!(
            plan(&[CountSource::Qemu], None, true).is_err(),
            "seq not asked for"
        );
        assert!(plan(&[CountSource::Strace], None, true).is_err());
        let probes: BTreeSet<String> = ["a", "b"].map(String::from).into();
        let all = vec![Feature::Probe("a".into()), Feature::Probe("b".into())];
        // `c` is in no binary: its transitions are not columns.
        let cols = choose(all.clone(), &probes, None, &s, false, &track).unwrap();
        assert_eq!(
            cols.names(),
            ["qemu:a", "qemu:b", "seq:a>a", "seq:a>b", "seq:b>a", "seq:b>b"]
        );
        // The agent's way: a QEMU that starts later may have it.
        let cols = choose(all.clone(), &probes, None, &s, true, &track).unwrap();
        assert_eq!(cols.len(), 2 + 9);
        // Beside a list: named features first, a named transition once.
        let wanted: Vec<String> = ["seq:b>a", "qemu:a"].map(String::from).to_vec();
        let cols = choose(all.clone(), &probes, Some(&wanted), &s, false, &track).unwrap();
        assert_eq!(
            cols.names(),
            ["seq:b>a", "qemu:a", "seq:a>a", "seq:a>b", "seq:b>b"]
        );
        let bad = ["a,b".to_string()];
        let err = choose(all, &probes, None, &s, false, &bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`a,b` is not a QEMU probe name"),
            "{err}"
        );
    }
}
