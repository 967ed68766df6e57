//! What an anomaly changes: how well each column alone tells its windows
//! from the normal windows of the same recordings (AUC). This explains a
//! result; nothing is chosen from it (that would let the attacks pick the
//! features).

use crate::dataset::Table;

/// How well one column separates anomalous from normal windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Separation {
    pub feature: String,
    /// P(anomalous > normal) + P(equal) / 2 over all pairs of windows:
    /// 0.5 is no difference, above it the anomaly raises the column.
    pub auc: f64,
}

impl Separation {
    /// How far from no difference, in either direction (0.5 to 1).
    pub fn strength(&self) -> f64 {
        self.auc.max(1.0 - self.auc)
    }
}

/// What `anomaly` changes in `tables`: its windows and the `normal`
/// windows counted, and every column nonzero in some of them, the
/// strongest separation first.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    pub anomaly_windows: usize,
    pub normal_windows: usize,
    pub columns: Vec<Separation>,
}

/// The windows labelled `anomaly` against those labelled `normal`, over
/// the tables' nonzero columns (a column a table lacks is 0 there).
pub fn changes(tables: &[Table], anomaly: &str, normal: &str) -> Changes {
    let refs: Vec<&Table> = tables.iter().collect();
    let features = Table::nonzero_features(&refs, &[]);
    let (mut attack, mut calm): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    for t in tables {
        let x = t.project(&features);
        for (i, k) in t.keys.iter().enumerate() {
            if k.label == anomaly {
                attack.push(x.row(i).to_vec());
            } else if k.label == normal {
                calm.push(x.row(i).to_vec());
            }
        }
    }
    let mut columns: Vec<Separation> = features
        .into_iter()
        .enumerate()
        .filter_map(|(j, feature)| {
            let a: Vec<f64> = attack.iter().map(|r| r[j]).collect();
            let n: Vec<f64> = calm.iter().map(|r| r[j]).collect();
            if a.iter().chain(&n).all(|v| *v == 0.0) {
                return None;
            }
            Some(Separation {
                feature,
                auc: auc(&a, &n),
            })
        })
        .collect();
    columns.sort_by(|x, y| y.strength().total_cmp(&x.strength()));
    Changes {
        anomaly_windows: attack.len(),
        normal_windows: calm.len(),
        columns,
    }
}

/// P(a > n) + P(a = n) / 2 over all pairs; 0.5 when either is empty.
pub fn auc(a: &[f64], n: &[f64]) -> f64 {
    if a.is_empty() || n.is_empty() {
        return 0.5;
    }
    let mut sum = 0.0;
    for x in a {
        for y in n {
            sum += if x > y {
                1.0
            } else if x == y {
                0.5
            } else {
                0.0
            };
        }
    }
    sum / (a.len() * n.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::RowKey;
    use ndarray::Array2;

    #[test]
    fn auc_counts_pairs_and_ties() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auc(&[1.0], &[2.0]), 0.0);
        assert_eq!(auc(&[2.0, 2.0], &[2.0]), 0.5);
        assert_eq!(auc(&[1.0, 3.0], &[2.0]), 0.5);
        assert_eq!(auc(&[], &[2.0]), 0.5);
    }

    #[test]
    fn the_column_an_anomaly_moves_comes_first() {
        let key = |label: &str| RowKey {
            vm: "vm".into(),
            pid: 1,
            label: label.into(),
            window: 0,
            start_unix_ms: 0,
            duration_ms: 2000,
            qemu: None,
            sampled: Vec::new(),
        };
        // qemu:up rises in the attack, qemu:down falls, qemu:same does not
        // move, qemu:zero is never counted; switches are not scored.
        let rows = [
            ("web", [1.0, 9.0, 5.0, 0.0]),
            ("web", [2.0, 8.0, 5.0, 0.0]),
            ("switch", [50.0, 0.0, 5.0, 0.0]),
            ("flood", [7.0, 6.0, 5.0, 0.0]),
            ("flood", [8.0, 1.0, 5.0, 0.0]),
        ];
        let table = Table {
            features: ["qemu:same", "qemu:down", "qemu:up", "qemu:zero"]
                .map(String::from)
                .to_vec(),
            keys: rows.iter().map(|(l, _)| key(l)).collect(),
            x: Array2::from_shape_fn((rows.len(), 4), |(i, j)| {
                let v = rows[i].1;
                // Columns in the table's order: same, down, up, zero.
                [v[2], v[1], v[0], v[3]][j]
            }),
        };
        let c = changes(&[table], "flood", "web");
        assert_eq!((c.anomaly_windows, c.normal_windows), (2, 2));
        let names: Vec<&str> = c.columns.iter().map(|s| s.feature.as_str()).collect();
        assert_eq!(names, ["qemu:down", "qemu:up", "qemu:same"]);
        assert_eq!(c.columns[0].auc, 0.0);
        assert_eq!(c.columns[1].auc, 1.0);
        assert_eq!(c.columns[2].strength(), 0.5);
    }
}
