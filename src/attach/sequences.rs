//! Sequence features (`seq:<a>><b>`) in the kernel: which QEMU probes are
//! tracked (those the `seq:` columns name, at most [`MAX_SEQ_PROBES`]),
//! each one's id in the sites' cookies, and the table of pairs of ids ->
//! column the BPF program looks a thread's transition up in (`seq_pairs` in
//! bpf/vmwatch.bpf.c).
//!
//! A tracked probe whose own `qemu:` count is not a column still has to be
//! attached; it gets a *hidden* counter after the row's features, so the
//! cost governor sees its hits (what they cost the VM) while rows never show
//! it ([`Sequences::width`] is the kernel's row, the columns come first).

use std::collections::HashMap;

use vmwatch_core::features::{Columns, Feature};

use crate::bpf::{seq_pair_key, MAX_SEQ_PROBES};
use crate::error::{Error, Result};

/// What a probe site of a counted or tracked probe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeIds {
    /// Its counter: a column, or a hidden counter past the columns.
    pub column: u32,
    /// Its id among the tracked probes (0: not tracked).
    pub seq: u16,
}

/// The tracked probes and the transitions counted between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sequences {
    /// Counted and tracked probes by name.
    pub probes: HashMap<String, ProbeIds>,
    /// (from id, to id, column) of each `seq:` column.
    pub pairs: Vec<(u16, u16, u32)>,
    /// Tracked probes (ids 1 to this).
    pub tracked: usize,
    /// Counters per row in the kernel: the columns, then one hidden counter
    /// per tracked probe that is not a column.
    pub width: usize,
}

impl Sequences {
    /// The probes of `columns` (`qemu:` columns, and those their `seq:`
    /// columns name) and the pairs. Tracked: the probes of `tracked` (in
    /// that order, whether or not a `seq:` column names them: a thread's
    /// previous probe is the last *tracked* probe it hit, so the set gives
    /// a transition its meaning), then those the `seq:` columns name; at
    /// most [`MAX_SEQ_PROBES`].
    pub fn of(columns: &Columns, tracked: &[String]) -> Result<Self> {
        let mut probes: HashMap<String, ProbeIds> = columns
            .iter()
            .filter_map(|(i, f)| match f {
                Feature::Probe(name) => Some((
                    name.clone(),
                    ProbeIds {
                        column: i as u32,
                        seq: 0,
                    },
                )),
                _ => None,
            })
            .collect();
        let seq: Vec<(usize, &str, &str)> = columns
            .iter()
            .filter_map(|(i, f)| match f {
                Feature::Seq { from, to } => Some((i, from.as_str(), to.as_str())),
                _ => None,
            })
            .collect();
        let mut width = columns.len();
        let mut next_id: u16 = 0;
        let mut id_of = |name: &str| -> u16 {
            let p = probes.entry(name.to_string()).or_insert_with(|| {
                width += 1;
                ProbeIds {
                    column: (width - 1) as u32,
                    seq: 0,
                }
            });
            if p.seq == 0 {
                // Saturates: more than MAX_SEQ_PROBES is refused below.
                next_id = next_id.saturating_add(1);
                p.seq = next_id;
            }
            p.seq
        };
        for name in tracked {
            id_of(name);
        }
        let pairs: Vec<(u16, u16, u32)> = seq
            .iter()
            .map(|&(col, from, to)| (id_of(from), id_of(to), col as u32))
            .collect();
        let tracked = usize::from(next_id);
        if tracked > MAX_SEQ_PROBES {
            return Err(Error::Invalid(format!(
                "the seq: features and --track name {tracked} probes, more than the \
                 {MAX_SEQ_PROBES} vmwatch tracks at once"
            )));
        }
        Ok(Self {
            probes,
            pairs,
            tracked,
            width,
        })
    }

    /// Makes sure probe `name` is attached: a column already, or a hidden
    /// counter past the others (a probe whose arguments some `arg:`
    /// features read, and which is not a column itself).
    pub fn ensure(&mut self, name: &str) {
        if !self.probes.contains_key(name) {
            self.probes.insert(
                name.to_string(),
                ProbeIds {
                    column: self.width as u32,
                    seq: 0,
                },
            );
            self.width += 1;
        }
    }

    /// Entries of the pair table: tracked x tracked (at least 1: a map is
    /// never empty).
    pub fn table_len(&self) -> u32 {
        (self.tracked * self.tracked).max(1) as u32
    }

    /// The pair table's entries: key -> column.
    pub fn table(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.pairs
            .iter()
            .map(|&(from, to, column)| (seq_pair_key(from, to, self.tracked), column))
    }

    /// Whether any transition is counted.
    pub fn any(&self) -> bool {
        !self.pairs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_probes_get_ids_and_hidden_counters_past_the_columns() {
        let cols = Columns::new([
            Feature::Probe("a".into()),
            Feature::seq("a", "b"),
            Feature::Syscall(1),
            Feature::seq("b", "b"),
            Feature::seq("c", "a"),
            Feature::Probe("d".into()),
        ]);
        let s = Sequences::of(&cols, &[]).unwrap();
        assert_eq!(s.width, 8, "6 columns, hidden b and c");
        let ids = |n: &str| s.probes[n];
        assert_eq!(ids("a"), ProbeIds { column: 0, seq: 1 });
        assert_eq!(ids("b"), ProbeIds { column: 6, seq: 2 });
        assert_eq!(ids("c"), ProbeIds { column: 7, seq: 3 });
        assert_eq!(ids("d"), ProbeIds { column: 5, seq: 0 });
        assert_eq!(s.pairs, [(1, 2, 1), (2, 2, 3), (3, 1, 4)]);
        assert_eq!((s.tracked, s.table_len()), (3, 9));
        // Key (from - 1) * 3 + (to - 1) -> column.
        assert_eq!(s.table().collect::<Vec<_>>(), [(1, 1), (4, 3), (6, 4)]);
        assert!(s.any());
        let plain = Sequences::of(&Columns::new([Feature::Probe("a".into())]), &[]).unwrap();
        assert!(!plain.any());
        assert_eq!((plain.width, plain.tracked, plain.table_len()), (1, 0, 1));
    }

    #[test]
    fn too_many_tracked_probes_are_refused_with_one_sentence() {
        let names: Vec<String> = (0..=MAX_SEQ_PROBES).map(|i| format!("p{i}")).collect();
        // A chain p0>p1, p1>p2, ...: 257 probes in 256 pairs.
        let chain =
            |names: &[String]| Columns::new(names.windows(2).map(|w| Feature::seq(&w[0], &w[1])));
        let err = Sequences::of(&chain(&names), &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            "the seq: features and --track name 257 probes, more than the 256 vmwatch tracks at \
             once"
        );
        let s = Sequences::of(&chain(&names[..MAX_SEQ_PROBES]), &[]).unwrap();
        assert_eq!((s.tracked, s.table_len()), (256, 65_536));
        // Every pair of 256 probes fits the table, each at its own key.
        let all = Columns::new(names[..MAX_SEQ_PROBES].iter().flat_map(|a| {
            names[..MAX_SEQ_PROBES]
                .iter()
                .map(move |b| Feature::seq(a, b))
        }));
        let s = Sequences::of(&all, &[]).unwrap();
        let keys: std::collections::BTreeSet<u32> = s.table().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 65_536);
        assert_eq!(keys.last(), Some(&65_535));
    }

    #[test]
    fn tracked_probes_without_a_column_are_tracked_first_and_counted_hidden() {
        let cols = Columns::new([Feature::Probe("a".into()), Feature::seq("b", "a")]);
        let s = Sequences::of(&cols, &["c".into(), "a".into()]).unwrap();
        let ids = |n: &str| s.probes[n];
        assert_eq!(ids("c"), ProbeIds { column: 2, seq: 1 });
        assert_eq!(ids("a"), ProbeIds { column: 0, seq: 2 });
        assert_eq!(ids("b"), ProbeIds { column: 3, seq: 3 });
        assert_eq!((s.tracked, s.width), (3, 4));
        assert_eq!(s.pairs, [(3, 2, 1)]);
        // Tracked but no transition counted: tracked all the same.
        let s = Sequences::of(&Columns::new([Feature::Probe("a".into())]), &["a".into()]).unwrap();
        assert_eq!((s.tracked, s.any()), (1, false));
    }
}
