//! What counting a selection costs the VM, as a share of one CPU (`select
//! --budget`): each feature needs some kernel work (a probe's uprobe
//! hits, tracking its transitions, reading its arguments, the syscall
//! counter, a KVM tracepoint, perf counters), each work item is charged
//! once however many features share it, at its highest mean rate in the
//! recordings times what one event of it costs (docs/PERFORMANCE.md).

use std::collections::{BTreeSet, HashMap};

use crate::arguments::{self, ArgFeature};
use crate::dataset::Table;
use crate::features::{FeatureList, PerfEvent, ARG, KVM, KVM_EXIT, PERF, QEMU, SEQ, SYS};
use crate::govern::{ARGS_NS, TRACK_NS};

/// What the syscall counter adds to each of the VM's syscalls, ns (the
/// collector bench's getppid loop: 118.5 watched against 92.3 unmonitored).
/// The KVM tracepoints are charged the same per event: a tracepoint with a
/// BPF program like it (not measured on their own).
pub const TRACEPOINT_NS: f64 = 26.0;
/// What perf counters add to each context switch of a watched thread, and
/// to each page fault, ns (`cargo bench --bench collector -- perf`: 1.64
/// to 1.74 µs per switch, 57 to 152 ns per fault).
pub const PERF_SWITCH_NS: f64 = 1_700.0;
pub const PERF_FAULT_NS: f64 = 150.0;

/// A piece of kernel work that some features need, paid once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Charge {
    /// A probe's uprobe hits (counted, or a hidden counter for `seq:` or
    /// `arg:`).
    Hits(String),
    /// Tracking a probe's hits for its transitions (`seq:`).
    Track(String),
    /// Reading a probe's arguments (`arg:`, and `virtqueue_pop` for the
    /// queue kinds).
    Args(String),
    /// The syscall counter (`sys:`), per syscall of the VM.
    Syscalls,
    /// A KVM tracepoint (`kvm:<event>`; `kvm_exit` for `kvm:exit:*`).
    Kvm(String),
    /// The VM's perf counters (`perf:`), per context switch and fault.
    Perf,
}

impl Charge {
    /// What the report calls this kind of work.
    pub fn kind(&self) -> &'static str {
        match self {
            Charge::Hits(_) => "probe hits",
            Charge::Track(_) => "seq tracking",
            Charge::Args(_) => "arg reading",
            Charge::Syscalls => "syscall counter",
            Charge::Kvm(_) => "kvm tracepoints",
            Charge::Perf => "perf counters",
        }
    }

    /// The work `feature` needs when `tracked` are the tracked probes: a
    /// `seq:` feature traps every one of them, not only the two it names.
    pub fn needed_with(feature: &str, tracked: &[String]) -> Vec<Charge> {
        let mut out = Self::needed_by(feature);
        if feature.starts_with(SEQ) {
            out.extend(
                tracked
                    .iter()
                    .flat_map(|p| [Charge::Hits(p.clone()), Charge::Track(p.clone())]),
            );
            out.sort();
            out.dedup();
        }
        out
    }

    /// The work `feature` needs (none for a name of no source).
    pub fn needed_by(feature: &str) -> Vec<Charge> {
        let probe = |p: &str| [Charge::Hits(p.into())];
        let mut out: Vec<Charge> = if let Some(p) = feature.strip_prefix(QEMU) {
            probe(p).into()
        } else if let Some(pair) = feature.strip_prefix(SEQ) {
            pair.split('>')
                .flat_map(|p| [Charge::Hits(p.into()), Charge::Track(p.into())])
                .collect()
        } else if let Some(rest) = feature.strip_prefix(ARG) {
            match ArgFeature::parse(rest) {
                Some(a) => {
                    let fam = a.family();
                    let mut v = vec![
                        Charge::Hits(fam.probe.into()),
                        Charge::Args(fam.probe.into()),
                    ];
                    // Queue kinds are learned from virtqueue_pop's arguments.
                    if fam.queue.is_some() {
                        let pop = arguments::POP.0;
                        v.extend([Charge::Hits(pop.into()), Charge::Args(pop.into())]);
                    }
                    v
                }
                None => Vec::new(),
            }
        } else if feature.starts_with(SYS) {
            vec![Charge::Syscalls]
        } else if feature.starts_with(KVM_EXIT) {
            vec![Charge::Kvm("exit".into())]
        } else if let Some(e) = feature.strip_prefix(KVM) {
            vec![Charge::Kvm(e.into())]
        } else if feature.starts_with(PERF) {
            vec![Charge::Perf]
        } else {
            Vec::new()
        };
        out.sort();
        out.dedup();
        out
    }
}

/// What each piece of work costs in some recordings: its highest cost
/// (percent of one CPU) over them.
#[derive(Debug, Clone)]
pub struct CostModel {
    percent: HashMap<Charge, f64>,
    /// Each probe's highest mean hit rate.
    hit_rate: HashMap<String, f64>,
    hit_cost_ns: f64,
}

/// What a set of features costs by a [`CostModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    /// Probes whose hits are trapped (columns or not).
    pub probes: usize,
    /// Their hits per second, summed.
    pub rate: f64,
    /// Percent of one CPU, in all.
    pub percent: f64,
    /// Of it, by kind of work ([`Charge::kind`]), in a fixed order; kinds
    /// the features do not need are left out.
    pub by_kind: Vec<(&'static str, f64)>,
}

impl CostModel {
    /// Charges every piece of work its highest cost in any of `tables`, a
    /// probe hit `hit_cost_ns`.
    pub fn new(tables: &[&Table], hit_cost_ns: f64) -> Self {
        let mut percent: HashMap<Charge, f64> = HashMap::new();
        let mut hit_rate: HashMap<String, f64> = HashMap::new();
        let pct = |rate: f64, ns: f64| rate * ns * 1e-9 * 100.0;
        for t in tables {
            let rates: HashMap<&str, f64> = t
                .features
                .iter()
                .map(String::as_str)
                .zip(t.mean_rates(&t.features))
                .collect();
            let sum = |prefix: &str| -> f64 {
                let mut s = 0.0;
                for (f, r) in &rates {
                    if f.starts_with(prefix) {
                        s += r;
                    }
                }
                s
            };
            let mut costs: Vec<(Charge, f64)> = Vec::new();
            for (f, &r) in &rates {
                if let Some(p) = f.strip_prefix(QEMU) {
                    let peak = hit_rate.entry(p.to_string()).or_insert(0.0);
                    *peak = peak.max(r);
                    costs.push((Charge::Hits(p.into()), pct(r, hit_cost_ns)));
                    costs.push((Charge::Track(p.into()), pct(r, TRACK_NS)));
                    costs.push((Charge::Args(p.into()), pct(r, ARGS_NS)));
                } else if f.starts_with(KVM) && !f.starts_with(KVM_EXIT) {
                    costs.push((Charge::Kvm(f[KVM.len()..].into()), pct(r, TRACEPOINT_NS)));
                }
            }
            costs.push((Charge::Syscalls, pct(sum(SYS), TRACEPOINT_NS)));
            costs.push((
                Charge::Kvm("exit".into()),
                pct(sum(KVM_EXIT), TRACEPOINT_NS),
            ));
            let perf = |e: PerfEvent| rates.get(format!("{PERF}{}", e.name()).as_str()).copied();
            costs.push((
                Charge::Perf,
                pct(
                    perf(PerfEvent::ContextSwitches).unwrap_or(0.0),
                    PERF_SWITCH_NS,
                ) + pct(perf(PerfEvent::PageFaults).unwrap_or(0.0), PERF_FAULT_NS),
            ));
            for (c, p) in costs {
                let peak = percent.entry(c).or_insert(0.0);
                *peak = peak.max(p);
            }
        }
        Self {
            percent,
            hit_rate,
            hit_cost_ns,
        }
    }

    pub fn hit_cost_ns(&self) -> f64 {
        self.hit_cost_ns
    }

    /// Percent of one CPU that `charge` costs (0 when the recordings do
    /// not show it).
    pub fn percent(&self, charge: &Charge) -> f64 {
        self.percent.get(charge).copied().unwrap_or(0.0)
    }

    /// What counting all of `list`'s features costs (its tracked set
    /// included), each piece of work once.
    pub fn of(&self, list: &FeatureList) -> Cost {
        let tracked = list.tracked();
        let charges: BTreeSet<Charge> = list
            .features
            .iter()
            .flat_map(|f| Charge::needed_with(f, &tracked))
            .collect();
        let mut by_kind: Vec<(&'static str, f64)> = Vec::new();
        let (mut probes, mut rate, mut percent) = (0, 0.0, 0.0);
        for c in &charges {
            let p = self.percent(c);
            percent += p;
            if let Charge::Hits(name) = c {
                probes += 1;
                rate += self.hit_rate.get(name).copied().unwrap_or(0.0);
            }
            match by_kind.iter_mut().find(|(k, _)| *k == c.kind()) {
                Some((_, sum)) => *sum += p,
                None => by_kind.push((c.kind(), p)),
            }
        }
        Cost {
            probes,
            rate,
            percent,
            by_kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(features: &[&str], counts: &[u64]) -> Table {
        let head = "vm,pid,label,window,start_unix_ms,duration_ms";
        let names = features.join(",");
        let values: Vec<String> = counts.iter().map(u64::to_string).collect();
        let text = format!("{head},{names}\nv,1,x,0,0,1000,{}\n", values.join(","));
        Table::from_reader("t.csv", text.as_bytes()).unwrap()
    }

    #[test]
    fn features_name_the_work_they_need() {
        assert_eq!(Charge::needed_by("qemu:a"), [Charge::Hits("a".into())]);
        assert_eq!(
            Charge::needed_by("seq:a>b"),
            [
                Charge::Hits("a".into()),
                Charge::Hits("b".into()),
                Charge::Track("a".into()),
                Charge::Track("b".into())
            ]
        );
        assert_eq!(Charge::needed_by("seq:a>a").len(), 2);
        let rx = Charge::needed_by("arg:virtqueue_fill:len:rx:64-127");
        assert!(rx.contains(&Charge::Args("virtqueue_pop".into())), "{rx:?}");
        assert_eq!(
            Charge::needed_by("arg:virtio_blk_handle_write:nsectors:8-15"),
            [
                Charge::Hits("virtio_blk_handle_write".into()),
                Charge::Args("virtio_blk_handle_write".into())
            ]
        );
        assert_eq!(Charge::needed_by("sys:read"), [Charge::Syscalls]);
        assert_eq!(
            Charge::needed_by("kvm:exit:hlt"),
            [Charge::Kvm("exit".into())]
        );
        assert_eq!(
            Charge::needed_by("kvm:kvm_pio"),
            [Charge::Kvm("kvm_pio".into())]
        );
        assert_eq!(Charge::needed_by("perf:page_faults"), [Charge::Perf]);
        assert!(Charge::needed_by("arg:nonsense").is_empty());
    }

    #[test]
    fn shared_work_is_charged_once() {
        // 1,000 hits/s of a, 10,000 syscalls/s over two columns, 100
        // context switches/s.
        let t = table(
            &["qemu:a", "sys:read", "sys:write", "perf:context_switches"],
            &[1000, 4000, 6000, 100],
        );
        let m = CostModel::new(&[&t], 1000.0);
        let one = m.of(&FeatureList::new(vec!["qemu:a".into()]));
        assert_eq!((one.probes, one.rate), (1, 1000.0));
        assert!((one.percent - 0.1).abs() < 1e-12, "{one:?}");
        // Tracking a for seq:a>a adds 25 ns per hit on top of its hits.
        let seq = m.of(&FeatureList::new(vec!["qemu:a".into(), "seq:a>a".into()]));
        assert!((seq.percent - 0.1025).abs() < 1e-12, "{seq:?}");
        assert_eq!(seq.probes, 1);
        // Both syscall columns share one counter: 10,000/s x 26 ns.
        let sys = m.of(&FeatureList::new(vec![
            "sys:read".into(),
            "sys:write".into(),
        ]));
        assert!((sys.percent - 0.026).abs() < 1e-12, "{sys:?}");
        assert_eq!(sys.by_kind, [("syscall counter", sys.percent)]);
        let perf = m.of(&FeatureList::new(vec!["perf:task_clock_vcpu_ns".into()]));
        assert!((perf.percent - 0.017).abs() < 1e-12, "{perf:?}");
    }

    #[test]
    fn a_transition_pays_for_every_tracked_probe() {
        // 1,000 hits/s of a, 3,000 of the tracked but unnamed c.
        let t = table(&["qemu:a", "qemu:c"], &[1000, 3000]);
        let m = CostModel::new(&[&t], 1000.0);
        assert_eq!(
            Charge::needed_with("seq:a>a", &["a".into(), "c".into()]),
            [
                Charge::Hits("a".into()),
                Charge::Hits("c".into()),
                Charge::Track("a".into()),
                Charge::Track("c".into())
            ]
        );
        // Counts are not transitions: the tracked set adds nothing to them.
        assert_eq!(
            Charge::needed_with("qemu:a", &["c".into()]),
            [Charge::Hits("a".into())]
        );
        let named = m.of(&FeatureList::new(vec!["seq:a>a".into()]));
        let mut list = FeatureList::new(vec!["seq:a>a".into()]);
        list.track = vec!["a".into(), "c".into()];
        let tracked = m.of(&list);
        assert_eq!((named.probes, tracked.probes), (1, 2));
        // c's 3,000 hits/s at 1 us and 25 ns each for tracking them.
        assert!(
            (tracked.percent - named.percent - 0.3075).abs() < 1e-12,
            "{tracked:?}"
        );
    }

    #[test]
    fn the_highest_rate_of_any_recording_is_charged() {
        let quiet = table(&["qemu:a"], &[10]);
        let busy = table(&["qemu:a"], &[5000]);
        let m = CostModel::new(&[&quiet, &busy], 1000.0);
        assert!((m.percent(&Charge::Hits("a".into())) - 0.5).abs() < 1e-12);
        assert_eq!(m.percent(&Charge::Hits("absent".into())), 0.0);
    }
}
