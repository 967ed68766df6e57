//! Features: what one column of a row counts. Each has a typed identity
//! ([`Feature`]: a QEMU probe, a syscall by number, a KVM tracepoint, an
//! exit reason, a software performance counter, a transition between two
//! QEMU probes, a bucket of a probe argument's values) and one name in a
//! namespace per source (`qemu:`, `sys:`, `kvm:`, `perf:`, `seq:`, `arg:`),
//! so rows from
//! several sources join into one vector (DESIGN.md). Names are for files; the
//! collectors work on the typed identity, and [`Columns`] is the one
//! mapping between a feature and its column.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use syscalls::Sysno;

use crate::arguments::ArgFeature;
use crate::error::{shown, Error, Result};

/// A namespace of features, one per kind of counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// QEMU's USDT probes (`qemu:`).
    Qemu,
    /// System calls of the QEMU process (`sys:`), counted in BPF or, as the
    /// paper's baseline, by strace.
    Syscalls,
    /// KVM tracepoints hit by the QEMU process's threads (`kvm:`).
    Kvm,
    /// Software performance counters of the QEMU process's threads
    /// (`perf:`): CPU time of its vCPU threads and of the others, context
    /// switches, page faults, CPU migrations.
    Perf,
    /// Transitions between QEMU probes on one thread (`seq:`): counted only
    /// when a feature list names them, never as part of "every feature".
    Seq,
    /// Log2 buckets of chosen QEMU probe arguments (`arg:`,
    /// [`crate::arguments`]).
    Arg,
}

impl Source {
    /// The source a feature name belongs to.
    pub fn of(feature: &str) -> Option<Self> {
        if feature.starts_with(QEMU) {
            Some(Source::Qemu)
        } else if feature.starts_with(SYS) {
            Some(Source::Syscalls)
        } else if feature.starts_with(KVM) {
            Some(Source::Kvm)
        } else if feature.starts_with(PERF) {
            Some(Source::Perf)
        } else if feature.starts_with(SEQ) {
            Some(Source::Seq)
        } else if feature.starts_with(ARG) {
            Some(Source::Arg)
        } else {
            None
        }
    }

    /// Whether `feature` comes from one of `sources` (an empty list allows
    /// all).
    pub fn any_of(sources: &[Source], feature: &str) -> bool {
        sources.is_empty() || Source::of(feature).is_some_and(|f| sources.contains(&f))
    }

    pub fn name(self) -> &'static str {
        match self {
            Source::Qemu => "qemu",
            Source::Syscalls => "syscalls",
            Source::Kvm => "kvm",
            Source::Perf => "perf",
            Source::Seq => "seq",
            Source::Arg => "arg",
        }
    }
}

impl FromStr for Source {
    type Err = String;

    /// `strace` names the syscall namespace too: `--source strace` filters
    /// like `--source syscalls` where features are chosen from files.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu" => Ok(Source::Qemu),
            "syscalls" | "strace" => Ok(Source::Syscalls),
            "kvm" => Ok(Source::Kvm),
            "perf" => Ok(Source::Perf),
            "seq" => Ok(Source::Seq),
            "arg" => Ok(Source::Arg),
            other => Err(format!(
                "unknown source `{other}` (sources: qemu, syscalls, kvm, perf, seq, arg, strace)"
            )),
        }
    }
}

/// What a column counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// A USDT probe of provider `qemu`, by name: `qemu:<probe>`.
    Probe(String),
    /// A syscall, by its number on the running architecture:
    /// `sys:<name>`.
    Syscall(u32),
    /// A KVM or KVM-MMU tracepoint: `kvm:<event>`.
    KvmEvent(String),
    /// A KVM exit reason by its name in the kernel's table (`other` for
    /// those missing from it): `kvm:exit:<reason>`.
    KvmExit(String),
    /// A software performance counter of the process's threads:
    /// `perf:<event>`.
    Perf(PerfEvent),
    /// Hits of QEMU probe `to` on a thread whose previous hit among the
    /// tracked probes (those the counted `seq:` features name) was of
    /// `from`: `seq:<from>><to>`.
    Seq { from: String, to: String },
    /// A log2 bucket of a QEMU probe argument's values:
    /// `arg:<probe>:<argument>[:<queue>]:<bucket>`.
    Arg(ArgFeature),
}

impl Feature {
    pub fn source(&self) -> Source {
        match self {
            Feature::Probe(_) => Source::Qemu,
            Feature::Syscall(_) => Source::Syscalls,
            Feature::KvmEvent(_) | Feature::KvmExit(_) => Source::Kvm,
            Feature::Perf(_) => Source::Perf,
            Feature::Seq { .. } => Source::Seq,
            Feature::Arg(_) => Source::Arg,
        }
    }

    /// The transition from probe `from` to probe `to`.
    pub fn seq(from: &str, to: &str) -> Self {
        Feature::Seq {
            from: from.to_string(),
            to: to.to_string(),
        }
    }

    /// The exit reasons' catch-all, `kvm:exit:other`.
    pub fn kvm_exit_other() -> Self {
        Feature::KvmExit(OTHER_EXIT.into())
    }
}

/// Name of the catch-all exit reason.
const OTHER_EXIT: &str = "other";

/// What a `perf:` feature counts: a software event of the kernel's perf
/// subsystem, summed over the watched process's threads, per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PerfEvent {
    /// CPU time (ns) of the vCPU threads (QEMU names them `CPU <n>/KVM`,
    /// `CPU <n>/TCG`, ... with `-name ...,debug-threads=on`): under KVM the
    /// guest's own work, which hits no QEMU probe.
    TaskClockVcpu,
    /// CPU time (ns) of every other thread (main loop, I/O threads and
    /// workers; all threads when none is named like a vCPU).
    TaskClockOther,
    /// Context switches of all threads.
    ContextSwitches,
    /// Page faults (minor and major) of all threads.
    PageFaults,
    /// Moves of a thread from one CPU to another.
    CpuMigrations,
}

impl PerfEvent {
    /// Every event, in column order.
    pub const ALL: [PerfEvent; 5] = [
        PerfEvent::TaskClockVcpu,
        PerfEvent::TaskClockOther,
        PerfEvent::ContextSwitches,
        PerfEvent::PageFaults,
        PerfEvent::CpuMigrations,
    ];

    /// The name after `perf:`.
    pub fn name(self) -> &'static str {
        match self {
            PerfEvent::TaskClockVcpu => "task_clock_vcpu_ns",
            PerfEvent::TaskClockOther => "task_clock_other_ns",
            PerfEvent::ContextSwitches => "context_switches",
            PerfEvent::PageFaults => "page_faults",
            PerfEvent::CpuMigrations => "cpu_migrations",
        }
    }
}

impl fmt::Display for PerfEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PerfEvent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        PerfEvent::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = PerfEvent::ALL.iter().map(|e| e.name()).collect();
                format!("is not a perf event vmwatch counts ({})", all.join(", "))
            })
    }
}

/// Every `arg:` feature, in column order.
pub fn arg_features() -> impl Iterator<Item = Feature> {
    crate::arguments::all().map(Feature::Arg)
}

/// Every `perf:` feature, in column order.
pub fn perf_features() -> impl Iterator<Item = Feature> {
    PerfEvent::ALL.into_iter().map(Feature::Perf)
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Feature::Probe(p) => write!(f, "{QEMU}{p}"),
            Feature::Syscall(nr) => match Sysno::new(*nr as usize) {
                Some(s) => write!(f, "{SYS}{}", s.name()),
                None => write!(f, "{SYS}{nr}"),
            },
            Feature::KvmEvent(e) => write!(f, "{KVM}{e}"),
            Feature::KvmExit(r) => write!(f, "{KVM_EXIT}{r}"),
            Feature::Perf(e) => write!(f, "{PERF}{e}"),
            Feature::Seq { from, to } => write!(f, "{SEQ}{from}{SEQ_ARROW}{to}"),
            Feature::Arg(a) => write!(f, "{ARG}{a}"),
        }
    }
}

impl FromStr for Feature {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let bad = |why: &str| Error::Invalid(format!("feature `{}` {why}", shown(name)));
        if let Some(p) = name.strip_prefix(QEMU) {
            return Ok(Feature::Probe(p.to_string()));
        }
        if let Some(s) = name.strip_prefix(SYS) {
            return Sysno::from_str(s)
                .map(|s| Feature::Syscall(s.id() as u32))
                .map_err(|_| bad("is not a syscall of this architecture"));
        }
        if let Some(r) = name.strip_prefix(KVM_EXIT) {
            return Ok(Feature::KvmExit(r.to_string()));
        }
        if let Some(e) = name.strip_prefix(KVM) {
            return Ok(Feature::KvmEvent(e.to_string()));
        }
        if let Some(e) = name.strip_prefix(PERF) {
            return e.parse().map(Feature::Perf).map_err(|why| bad(&why));
        }
        if let Some(pair) = name.strip_prefix(SEQ) {
            return match pair.split_once(SEQ_ARROW) {
                Some((from, to)) if is_probe_name(from) && is_probe_name(to) => {
                    Ok(Feature::seq(from, to))
                }
                _ => Err(bad(
                    "is not a transition between two QEMU probes, `seq:<probe>><probe>` \
                     (e.g. `seq:virtqueue_fill>virtio_notify`)",
                )),
            };
        }
        if let Some(rest) = name.strip_prefix(ARG) {
            return ArgFeature::parse(rest).map(Feature::Arg).ok_or_else(|| {
                bad("is not an argument feature vmwatch counts, \
                     `arg:<probe>:<argument>[:rx|tx|rw]:<bucket>` (e.g. \
                     `arg:virtqueue_fill:len:rx:64-127`; docs/FEATURES.md lists them)")
            });
        }
        Err(bad(
            "belongs to no source vmwatch collects (qemu:, sys:, kvm:, perf:, seq:, arg:)",
        ))
    }
}

/// The features of a row, in column order: the one mapping between a
/// feature and its column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    features: Vec<Feature>,
    names: Vec<String>,
    index: HashMap<Feature, usize>,
}

impl Columns {
    /// Columns of `features` in this order; a repeated feature keeps its
    /// first column.
    pub fn new(features: impl IntoIterator<Item = Feature>) -> Self {
        let mut c = Self::default();
        for f in features {
            if !c.index.contains_key(&f) {
                c.index.insert(f.clone(), c.features.len());
                c.names.push(f.to_string());
                c.features.push(f);
            }
        }
        c
    }

    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Column names (a dataset header's feature part).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The column of `feature`.
    pub fn position(&self, feature: &Feature) -> Option<usize> {
        self.index.get(feature).copied()
    }

    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Whether any column is of `source`.
    pub fn has(&self, source: Source) -> bool {
        self.features.iter().any(|f| f.source() == source)
    }

    /// Columns with their features, in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Feature)> {
        self.features.iter().enumerate()
    }
}

/// Prefix of KVM features.
pub const KVM: &str = "kvm:";
/// Prefix of exit-reason features.
pub const KVM_EXIT: &str = "kvm:exit:";
/// Feature for exit reasons missing from the kernel's table.
pub const KVM_EXIT_OTHER: &str = "kvm:exit:other";

/// Prefix of QEMU USDT probe features.
pub const QEMU: &str = "qemu:";

/// Prefix of syscall features.
pub const SYS: &str = "sys:";

/// Prefix of software performance counter features.
pub const PERF: &str = "perf:";

/// Prefix of sequence features.
pub const SEQ: &str = "seq:";

/// Prefix of argument features.
pub const ARG: &str = "arg:";

/// Prefix of a feature list's lines naming a tracked probe (no column).
pub const TRACK: &str = "track:";

/// What separates a sequence feature's two probes.
const SEQ_ARROW: char = '>';

/// Every transition among `probes` (`--track`): `seq:a>b` for each ordered
/// pair, `a>a` included, in the order given; a repeated probe counts once.
pub fn transitions(probes: &[String]) -> Result<Vec<Feature>> {
    let mut unique: Vec<&str> = Vec::new();
    for p in probes {
        if !is_probe_name(p) {
            return Err(Error::Invalid(format!(
                "`{}` is not a QEMU probe name to track (a C identifier such as \
                 `virtqueue_fill`)",
                shown(p)
            )));
        }
        if !unique.contains(&p.as_str()) {
            unique.push(p);
        }
    }
    Ok(unique
        .iter()
        .flat_map(|a| unique.iter().map(move |b| Feature::seq(a, b)))
        .collect())
}

/// Whether `name` can be a QEMU probe's name in a `seq:` feature: a C
/// identifier, as trace-events names are (so `>` cannot occur in it).
fn is_probe_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Syscalls that are tracing machinery, not the traced program's behaviour:
/// on Linux ≥ 6.18 every hit of an optimized uprobe (a USDT probe on a 5-byte
/// nop, as in the lab's QEMU) enters the kernel through the `uprobe` syscall,
/// so counting it would count vmwatch's own probes a second time.
const TRACING_SYSCALLS: [&str; 2] = ["uprobe", "uretprobe"];

/// Every syscall of the running architecture but the tracing ones.
pub fn syscall_features() -> impl Iterator<Item = Feature> {
    Sysno::iter()
        .filter(|s| !TRACING_SYSCALLS.contains(&s.name()))
        .map(|s| Feature::Syscall(s.id() as u32))
}

/// Where each of a list of wanted features sits among some columns: the one
/// mapping from a row's columns (a dataset's, a collector's) to a model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    /// For each wanted feature, its column, if the columns have it.
    index: Vec<Option<usize>>,
}

impl Projection {
    pub fn new(columns: &[String], wanted: &[String]) -> Self {
        let at: std::collections::HashMap<&str, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        Self {
            index: wanted.iter().map(|f| at.get(f.as_str()).copied()).collect(),
        }
    }

    /// Wanted features, in order, with their column (`None`: absent, read as 0).
    pub fn columns(&self) -> &[Option<usize>] {
        &self.index
    }

    /// How many wanted features the columns lack.
    pub fn missing(&self) -> usize {
        self.index.iter().filter(|c| c.is_none()).count()
    }

    /// The wanted features of one row of counts, absent ones as 0.
    pub fn row(&self, row: &[u64], out: &mut [f64]) {
        for (o, c) in out.iter_mut().zip(&self.index) {
            *o = c.map_or(0.0, |c| row[c] as f64);
        }
    }
}

/// A feature list (`--features`, `--probes`, the agent's `features`): the
/// features, and the probes their `seq:` features were counted among.
///
/// A `seq:a>b` column counts hits of `b` whose previous *tracked* hit was
/// `a`, so it means something only with its tracked set: a list selected
/// from recordings that tracked more probes than its `seq:` features name
/// says so with `track:PROBE` lines, and whoever counts it tracks them too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeatureList {
    /// Feature names, in order, each once.
    pub features: Vec<String>,
    /// `track:` lines, in order; empty: the probes the `seq:` features name.
    pub track: Vec<String>,
}

impl FeatureList {
    /// A list without `track:` lines.
    pub fn new(features: Vec<String>) -> Self {
        Self {
            features,
            track: Vec::new(),
        }
    }

    /// The tracked set its `seq:` features were counted with: the `track:`
    /// lines, else the probes they name (empty without `seq:` features).
    pub fn tracked(&self) -> Vec<String> {
        if self.track.is_empty() {
            named_probes(&self.features)
        } else {
            self.track.clone()
        }
    }

    /// The list as a file: `header` (comment lines), the features, then one
    /// `track:` line per tracked probe. [`parse_feature_list`] reads it back.
    pub fn to_text(&self, header: &str) -> String {
        let mut s = header.to_string();
        for f in &self.features {
            s.push_str(f);
            s.push('\n');
        }
        if !self.track.is_empty() {
            s.push_str(
                "# the probes the seq: transitions are counted among (tracked, no columns)\n",
            );
            for p in &self.track {
                s.push_str(TRACK);
                s.push_str(p);
                s.push('\n');
            }
        }
        s
    }
}

/// The probes the `seq:` features among `names` name, each once, in
/// first-named order.
pub fn named_probes(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if let Ok(Feature::Seq { from, to }) = name.parse() {
            for p in [from, to] {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Reads a feature list (at most
/// [`MAX_FEATURE_LIST_BYTES`](crate::limits::MAX_FEATURE_LIST_BYTES)); see
/// [`parse_feature_list`].
pub fn read_feature_list(path: &Path) -> Result<FeatureList> {
    let bytes = crate::limits::read_file(
        path,
        crate::limits::MAX_FEATURE_LIST_BYTES,
        "a feature list",
    )?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Read {
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ),
    })?;
    parse_feature_list(&path.display().to_string(), &text)
}

/// Parses a feature list: one name per line; blank lines and `#` comments
/// are ignored. A bare probe name means `qemu:NAME`; `track:NAME` names a
/// tracked probe ([`FeatureList`]). `name` names the list in messages.
pub fn parse_feature_list(name: &str, text: &str) -> Result<FeatureList> {
    parse_lines(text).map_err(|msg| Error::Invalid(format!("{name}: {msg}")))
}

fn parse_lines(text: &str) -> Result<FeatureList, String> {
    let mut out = FeatureList::default();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.split_whitespace().count() != 1 {
            return Err(format!(
                "line {}: expected one feature name, got `{}`",
                i + 1,
                shown(line)
            ));
        }
        if let Some(probe) = line.strip_prefix(TRACK) {
            if !is_probe_name(probe) {
                return Err(format!(
                    "line {}: `{}` is not a QEMU probe name to track (a C identifier such as \
                     `virtio_queue_notify`)",
                    i + 1,
                    shown(probe)
                ));
            }
            if !out.track.iter().any(|p| p == probe) {
                out.track.push(probe.to_string());
            }
            continue;
        }
        let name = if line.starts_with(SEQ) || line.starts_with(ARG) {
            // Refused here, with its line, rather than counted as missing.
            Feature::from_str(line)
                .map_err(|e| format!("line {}: {e}", i + 1))?
                .to_string()
        } else if line.contains(':') {
            line.to_string()
        } else {
            Feature::Probe(line.to_string()).to_string()
        };
        // A set, not `out.contains`: a long list must not take quadratic time.
        if seen.insert(name.clone()) {
            out.features.push(name);
        }
    }
    if out.features.is_empty() {
        return Err("the feature list is empty".into());
    }
    if !out.track.is_empty() {
        let untracked: Vec<String> = named_probes(&out.features)
            .into_iter()
            .filter(|p| !out.track.contains(p))
            .collect();
        if !untracked.is_empty() {
            return Err(format!(
                "its seq: features name probes its track: lines leave out ({}): a transition \
                 counts only among tracked probes",
                untracked.join(", ")
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorMessage as _;

    #[test]
    fn tracing_syscalls_are_not_features() {
        let names: Vec<String> = syscall_features().map(|f| f.to_string()).collect();
        assert!(names.contains(&"sys:getppid".to_string()));
        assert!(!names
            .iter()
            .any(|n| n == "sys:uprobe" || n == "sys:uretprobe"));
    }

    #[test]
    fn parses_names_comments_and_bare_probes() {
        let list = parse_feature_list(
            "f",
            "# chosen\nqemu:tap_send\n\nvirtqueue_fill # mem\nqemu:tap_send\n",
        )
        .unwrap();
        assert_eq!(
            list,
            FeatureList::new(vec!["qemu:tap_send".into(), "qemu:virtqueue_fill".into()])
        );
    }

    #[test]
    fn track_lines_name_the_tracked_set_and_round_trip() {
        let list = parse_feature_list(
            "f",
            "qemu:a\nseq:a>b\ntrack:a\ntrack:b # kick\ntrack:c\ntrack:a\n",
        )
        .unwrap();
        assert_eq!(list.features, ["qemu:a", "seq:a>b"]);
        assert_eq!(list.track, ["a", "b", "c"]);
        assert_eq!(list.tracked(), ["a", "b", "c"]);
        let text = list.to_text("# made by a test\n");
        assert!(
            text.starts_with("# made by a test\nqemu:a\nseq:a>b\n#"),
            "{text}"
        );
        assert_eq!(parse_feature_list("f", &text).unwrap(), list);
        // Without track: lines the tracked set is what the seq: features name.
        let plain = parse_feature_list("f", "seq:b>a\nseq:c>b\nqemu:d\n").unwrap();
        assert_eq!(plain.tracked(), ["b", "a", "c"]);
        assert!(!plain.to_text("").contains(TRACK));
        assert!(parse_feature_list("f", "qemu:d\n")
            .unwrap()
            .tracked()
            .is_empty());
    }

    #[test]
    fn track_lines_must_cover_the_seq_features_and_be_probe_names() {
        let err = parse_feature_list("f", "seq:a>b\nseq:c>a\ntrack:a\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f: its seq: features name probes its track: lines leave out (b, c): a transition \
             counts only among tracked probes"
        );
        let err = parse_feature_list("f", "qemu:a\ntrack:a>b\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("f: line 2: `a>b` is not a QEMU probe name to track"),
            "{err}"
        );
        // Tracked probes alone are no features.
        let err = parse_feature_list("f", "track:a\n").unwrap_err();
        assert_eq!(err.to_string(), "f: the feature list is empty");
    }

    #[test]
    fn syscall_names_come_from_the_running_arch() {
        let all: Vec<Feature> = syscall_features().collect();
        assert!(all.len() > 300, "{}", all.len());
        let getppid: Feature = "sys:getppid".parse().unwrap();
        assert_eq!(getppid, Feature::Syscall(libc::SYS_getppid as u32));
        assert!(all.contains(&getppid));
        assert_eq!(getppid.to_string(), "sys:getppid");
    }

    #[test]
    fn names_round_trip_and_columns_map_both_ways() {
        for name in [
            "qemu:virtqueue_fill",
            "sys:ioctl",
            "kvm:kvm_exit",
            "kvm:exit:HLT",
            "kvm:exit:other",
        ] {
            let f: Feature = name.parse().unwrap();
            assert_eq!(f.to_string(), name);
        }
        assert_eq!(
            "kvm:exit:other".parse::<Feature>().unwrap(),
            Feature::kvm_exit_other()
        );
        assert_eq!(
            "kvm:kvm_pio".parse::<Feature>().unwrap().source(),
            Source::Kvm
        );
        let err = "sys:nosuchcall".parse::<Feature>().error_message();
        assert!(err.contains("not a syscall"), "{err}");
        let err = "foo".parse::<Feature>().error_message();
        assert!(err.contains("belongs to no source"), "{err}");
        let cols = Columns::new([
            Feature::Probe("a".into()),
            Feature::Syscall(1),
            Feature::Probe("a".into()),
        ]);
        assert_eq!(cols.len(), 2);
        assert_eq!(cols.names(), ["qemu:a", "sys:write"]);
        assert_eq!(cols.position(&Feature::Syscall(1)), Some(1));
        assert!(cols.has(Source::Syscalls) && !cols.has(Source::Kvm));
    }

    #[test]
    fn perf_names_round_trip_and_unknown_events_are_refused() {
        let names: Vec<String> = perf_features().map(|f| f.to_string()).collect();
        assert_eq!(
            names,
            [
                "perf:task_clock_vcpu_ns",
                "perf:task_clock_other_ns",
                "perf:context_switches",
                "perf:page_faults",
                "perf:cpu_migrations",
            ]
        );
        for (name, event) in names.iter().zip(PerfEvent::ALL) {
            let f: Feature = name.parse().unwrap();
            assert_eq!(f, Feature::Perf(event));
            assert_eq!(f.source(), Source::Perf);
            assert_eq!(Source::of(name), Some(Source::Perf));
            assert_eq!(event.name().parse::<PerfEvent>(), Ok(event));
        }
        let err = "perf:cycles".parse::<Feature>().error_message();
        assert_eq!(
            err,
            "feature `perf:cycles` is not a perf event vmwatch counts (task_clock_vcpu_ns, \
             task_clock_other_ns, context_switches, page_faults, cpu_migrations)"
        );
        assert_eq!("perf".parse::<Source>(), Ok(Source::Perf));
        assert_eq!(Source::Perf.name(), "perf");
        let cols = Columns::new([
            Feature::Probe("a".into()),
            Feature::Perf(PerfEvent::PageFaults),
        ]);
        assert!(cols.has(Source::Perf) && !cols.has(Source::Kvm));
        assert_eq!(
            cols.position(&Feature::Perf(PerfEvent::PageFaults)),
            Some(1)
        );
        assert!(Source::any_of(&[Source::Perf], "perf:page_faults"));
        assert!(!Source::any_of(&[Source::Perf], "qemu:page_faults"));
    }

    #[test]
    fn seq_names_round_trip_and_malformed_ones_are_refused() {
        let f: Feature = "seq:virtqueue_fill>virtio_notify".parse().unwrap();
        assert_eq!(f, Feature::seq("virtqueue_fill", "virtio_notify"));
        assert_eq!(f.to_string(), "seq:virtqueue_fill>virtio_notify");
        assert_eq!(f.source(), Source::Seq);
        assert_eq!(Source::of("seq:a>b"), Some(Source::Seq));
        assert_eq!("seq".parse::<Source>(), Ok(Source::Seq));
        assert_eq!(Source::Seq.name(), "seq");
        let t = transitions(&["a".into(), "b".into(), "a".into()]).unwrap();
        let names: Vec<String> = t.iter().map(|f| f.to_string()).collect();
        assert_eq!(names, ["seq:a>a", "seq:a>b", "seq:b>a", "seq:b>b"]);
        let err = transitions(&["a>b".into()]).unwrap_err().to_string();
        assert!(
            err.starts_with("`a>b` is not a QEMU probe name to track"),
            "{err}"
        );
        // A probe may follow itself; names are identifiers.
        let f: Feature = "seq:_x1>_x1".parse().unwrap();
        assert_eq!(f, Feature::seq("_x1", "_x1"));
        assert_eq!(f.to_string(), "seq:_x1>_x1");
        for bad in [
            "seq:",
            "seq:a",
            "seq:a>",
            "seq:>b",
            "seq:a>b>c",
            "seq:a->b",
            "seq:qemu:a>b",
            "seq:a>b ",
            "seq:1a>b",
            "seq:a\u{2028}>b",
        ] {
            let err = bad.parse::<Feature>().error_message();
            assert_eq!(
                err,
                format!(
                    "feature `{}` is not a transition between two QEMU probes, \
                     `seq:<probe>><probe>` (e.g. `seq:virtqueue_fill>virtio_notify`)",
                    shown(bad)
                ),
                "{bad:?}"
            );
            assert!(!err.contains('\n') && !err.contains('\u{2028}'), "{err}");
        }
        let cols = Columns::new([
            Feature::Probe("a".into()),
            Feature::seq("a", "b"),
            Feature::seq("b", "a"),
        ]);
        assert_eq!(cols.names(), ["qemu:a", "seq:a>b", "seq:b>a"]);
        assert_eq!(cols.position(&Feature::seq("b", "a")), Some(2));
        assert!(cols.has(Source::Seq) && cols.has(Source::Qemu));
        assert!(Source::any_of(&[Source::Seq], "seq:a>b"));
        assert!(!Source::any_of(&[Source::Qemu], "seq:a>b"));
    }

    #[test]
    fn feature_lists_refuse_malformed_seq_names_by_line() {
        let list = parse_feature_list("f", "qemu:a\nseq:a>b\n").unwrap();
        assert_eq!(list.features, ["qemu:a", "seq:a>b"]);
        let err = parse_feature_list("f", "qemu:a\nseq:a>b>c\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f: line 2: feature `seq:a>b>c` is not a transition between two QEMU probes, \
             `seq:<probe>><probe>` (e.g. `seq:virtqueue_fill>virtio_notify`)"
        );
    }

    #[test]
    fn filters_features_by_source() {
        let q = [Source::Qemu];
        assert!(Source::any_of(&q, "qemu:tap_send"));
        assert!(!Source::any_of(&q, "sys:read"));
        let strace: Source = "strace".parse().unwrap();
        assert!(Source::any_of(&[strace], "sys:read"));
        assert!(Source::any_of(&[], "kvm:kvm_pio"));
        assert!(!Source::any_of(&[Source::Kvm], "other"));
    }

    #[test]
    fn rejects_empty_and_garbled_lists() {
        let err = parse_feature_list("f", "# nothing\n\n").unwrap_err();
        assert_eq!(err.to_string(), "f: the feature list is empty");
        let err = parse_feature_list("f", "qemu:a\nqemu:b qemu:c\n").unwrap_err();
        assert!(err.to_string().starts_with("f: line 2: "), "{err}");
        // Found by the features fuzz target: a lone CR is no line end for
        // `lines()`, and was echoed into the message as is.
        let err = parse_feature_list("f", "qemu:a\rqemu:b\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            r"f: line 1: expected one feature name, got `qemu:a\rqemu:b`"
        );
    }
}
