//! The detector: a scaler fitted on normal windows and a one-class SVM with
//! a Gaussian kernel (trained with linfa-svm), saved as one versioned JSON
//! file (DESIGN.md "Model file").
//!
//! Scaling: raw counts span orders of magnitude (a busy probe fires 10⁶
//! times per window, a rare one 10⁰), so each count goes through ln(1 + x)
//! and is then standardised with the training windows' mean and standard
//! deviation. Without the log the RBF kernel sees only the busiest probes;
//! without the standardisation gamma would mean something else per feature.

use std::path::Path;

use linfa::prelude::*;
use linfa_svm::Svm;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::error::{shown, Error, Result};
use crate::qemu::QemuBuild;

/// Identifies a vmwatch model file.
pub const FORMAT: &str = "vmwatch-model";
/// Version of the model file layout.
pub const VERSION: u32 = 1;
/// The scaler's transform, the only one this vmwatch applies.
pub const TRANSFORM: &str = "log1p-standardize";

/// A trained detector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Model {
    pub format: String,
    pub version: u32,
    /// Feature names, in the order the scaler and SVM expect.
    pub features: Vec<String>,
    pub scaler: Scaler,
    pub svm: OneClassSvm,
    pub training: TrainingSummary,
    pub smoothing: Smoothing,
}

/// ln(1 + x), then (v − mean) / scale per feature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scaler {
    pub transform: String,
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

/// decision(x) = Σ coef_i · exp(−gamma · ‖sv_i − x‖²) − rho; negative means
/// outside the learned normal region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneClassSvm {
    pub kernel: String,
    pub nu: f64,
    pub gamma: f64,
    pub rho: f64,
    pub coef: Vec<f64>,
    pub support_vectors: Vec<Vec<f64>>,
}

/// How the model was made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub windows: usize,
    pub files: Vec<String>,
    /// Mean false-positive rate of the chosen parameters over the CV folds.
    pub cv_false_positive_rate: Option<f64>,
    pub folds: usize,
    pub grid: String,
    /// The QEMU builds the training windows were counted on, each once
    /// (from the datasets' provenance columns); empty when the files do not
    /// say (and in models of older vmwatch versions).
    #[serde(default)]
    pub qemu_builds: Vec<QemuBuild>,
    /// Features whose count was estimated (the cost governor duty-cycled
    /// the probe) in some training windows, with the share of windows; the
    /// model learned those windows' estimates as the counts they stand
    /// for. Empty when every count was exact (and in older models).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub estimated: Vec<Estimated>,
    /// The probes the training recordings tracked for `seq:` transitions
    /// when the model has `seq:` features: a thread's previous probe is the
    /// last tracked one it hit, so a live session tracks these same probes
    /// for its transitions to mean what they meant. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracked: Vec<String>,
}

/// A feature estimated in some training windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimated {
    pub feature: String,
    /// Share of the training windows in which it was.
    pub windows: f64,
    /// Its mean sampling fraction in those windows.
    pub mean_fraction: f64,
}

/// Flag a VM only when `k` of its last `n` windows are anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Smoothing {
    pub k: u32,
    pub n: u32,
}

impl Default for Smoothing {
    fn default() -> Self {
        Self { k: 1, n: 1 }
    }
}

impl Smoothing {
    /// What vmwatch smooths with unless told otherwise (`train`, `eval`,
    /// the agent): 2 of the last 3 windows. A lone anomalous window is
    /// noise more often than an attack; in RESULTS.md (2026-12-03) 2/3
    /// has fewer false positives than raw verdicts for 11 of the 12
    /// feature sets (not every nonzero column with the wide grid: 0.90%
    /// raw, 1.02%), at a median F within 4 points either way.
    pub const RECOMMENDED: Smoothing = Smoothing { k: 2, n: 3 };

    /// Whether the newest window is flagged, given the raw verdicts of the
    /// windows so far in time order (only the last `n` count).
    pub fn flags(&self, raw: &[bool]) -> bool {
        let recent = &raw[raw.len().saturating_sub(self.n as usize)..];
        recent.iter().filter(|a| **a).count() >= self.k as usize
    }

    /// Smoothed verdicts of a sequence of windows in time order.
    pub fn apply(&self, raw: &[bool]) -> Vec<bool> {
        (1..=raw.len()).map(|end| self.flags(&raw[..end])).collect()
    }
}

impl std::fmt::Display for Smoothing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl std::str::FromStr for Smoothing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not K/N (e.g. 3/5)"))?;
        let (k, n): (u32, u32) = (
            k.trim()
                .parse()
                .map_err(|_| format!("`{s}`: K is not a number"))?,
            n.trim()
                .parse()
                .map_err(|_| format!("`{s}`: N is not a number"))?,
        );
        if k == 0 || n == 0 || k > n {
            return Err(format!("`{s}`: need 1 <= K <= N"));
        }
        Ok(Self { k, n })
    }
}

impl Scaler {
    /// Fits on raw counts (rows × features).
    pub fn fit(x: ArrayView2<f64>) -> Self {
        let logged = x.mapv(f64::ln_1p);
        let mean = logged
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(x.ncols()));
        let scale = logged
            .std_axis(Axis(0), 0.0)
            .mapv(|s| if s > 1e-12 { s } else { 1.0 });
        Self {
            transform: TRANSFORM.into(),
            mean: mean.to_vec(),
            scale: scale.to_vec(),
        }
    }

    pub fn transform(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut out = x.mapv(f64::ln_1p);
        for mut row in out.rows_mut() {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        out
    }
}

impl OneClassSvm {
    /// Trains on scaled rows. linfa's Gaussian kernel is exp(−‖a−b‖²/eps),
    /// so eps = 1/gamma.
    pub fn fit(x: &Array2<f64>, nu: f64, gamma: f64) -> Result<Self> {
        if !valid_nu(nu) || !valid_gamma(gamma) {
            return Err(Error::Invalid(format!(
                "need 0 < nu <= 1 and a finite gamma > 0, not nu = {nu}, gamma = {gamma}"
            )));
        }
        if x.nrows() < 2 {
            return Err(Error::Invalid("need at least 2 training windows".into()));
        }
        let dataset = DatasetBase::new(x.clone(), Array1::<()>::from_elem(x.nrows(), ()));
        let svm: Svm<f64, bool> = Svm::<f64, linfa::dataset::Pr>::params()
            .nu_weight(nu)
            .eps(1e-3)
            .gaussian_kernel(1.0 / gamma)
            .fit(&dataset)
            .map_err(|source| Error::Svm { source })?;
        // linfa keeps the support vectors in training order with the
        // alphas above its threshold; rebuild them for a self-contained file.
        let threshold = 100.0 * f64::EPSILON;
        let mut coef = Vec::new();
        let mut support_vectors = Vec::new();
        for (row, &a) in x.rows().into_iter().zip(&svm.alpha) {
            if a.abs() > threshold {
                coef.push(a);
                support_vectors.push(row.to_vec());
            }
        }
        Ok(Self {
            kernel: "rbf".into(),
            nu,
            gamma,
            rho: svm.rho,
            coef,
            support_vectors,
        })
    }

    /// The decision value of one scaled row.
    pub fn decision(&self, x: ArrayView1<f64>) -> f64 {
        let sum: f64 = self
            .support_vectors
            .iter()
            .zip(&self.coef)
            .map(|(sv, c)| {
                let d2: f64 = sv
                    .iter()
                    .zip(x.iter())
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                c * (-self.gamma * d2).exp()
            })
            .sum();
        sum - self.rho
    }
}

impl Model {
    /// Fits scaler and SVM on raw counts of normal windows.
    pub fn fit(
        features: Vec<String>,
        raw: ArrayView2<f64>,
        nu: f64,
        gamma: f64,
        training: TrainingSummary,
    ) -> Result<Self> {
        let scaler = Scaler::fit(raw);
        let svm = OneClassSvm::fit(&scaler.transform(raw), nu, gamma)?;
        Ok(Self {
            format: FORMAT.into(),
            version: VERSION,
            features,
            scaler,
            svm,
            training,
            smoothing: Smoothing::default(),
        })
    }

    /// Whether the model relies on feature `j`: it was nonzero in some
    /// training window. (ln(1 + x) is 0 only for x = 0, so the scaler's mean
    /// is positive exactly then.) A feature that was zero in every training
    /// window is zero when it is missing, too: its absence changes no
    /// decision.
    pub fn relies_on(&self, j: usize) -> bool {
        self.scaler.mean.get(j).is_some_and(|&m| m > 0.0)
    }

    /// Whether the model was trained on windows of `build`: `None` when
    /// that cannot be told (the VM's build id is unknown, or the model
    /// records none: an older model, or datasets without provenance).
    pub fn trained_on(&self, build: &QemuBuild) -> Option<bool> {
        let known = self
            .training
            .qemu_builds
            .iter()
            .filter(|b| b.build_id.is_some());
        if build.build_id.is_none() || known.clone().next().is_none() {
            return None;
        }
        Some(known.into_iter().any(|b| b.same_build(build)))
    }

    /// Decision values of raw rows (columns in `self.features` order).
    pub fn decisions(&self, raw: ArrayView2<f64>) -> Vec<f64> {
        let scaled = self.scaler.transform(raw);
        scaled
            .rows()
            .into_iter()
            .map(|r| self.svm.decision(r))
            .collect()
    }

    /// Writes the model atomically (temporary file, fsync, rename); a model
    /// that [`Model::load`] would refuse is not written.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate().map_err(|msg| {
            Error::Invalid(format!(
                "refusing to write {}: the model is not usable ({msg})",
                path.display()
            ))
        })?;
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Invalid(format!("encoding the model: {e}")))?;
        crate::atomic::write(path, &json)
    }

    /// Reads and validates a model file (at most
    /// [`MAX_MODEL_BYTES`](crate::limits::MAX_MODEL_BYTES)).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::limits::read_file(path, crate::limits::MAX_MODEL_BYTES, "a model file")?;
        Self::from_json(&path.display().to_string(), &bytes)
    }

    /// Parses and validates a model from the bytes of a model file; `name`
    /// names it in messages.
    pub fn from_json(name: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::Model {
            path: name.to_string(),
            reason,
        };
        let head: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
        if head.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(format!("no `\"format\": \"{FORMAT}\"` field")));
        }
        let version = head.get("version").and_then(|v| v.as_u64());
        if version != Some(u64::from(VERSION)) {
            return Err(bad(format!(
                "file format version {} but this vmwatch reads version {VERSION}",
                version.map_or("?".into(), |v| v.to_string())
            )));
        }
        // JSON has no infinity: serde_json writes a non-finite number as
        // null. Name the field rather than serde's "expected f64".
        for field in ["nu", "gamma", "rho"] {
            if let Some(v) = head.get("svm").and_then(|svm| svm.get(field)) {
                if !v.is_number() {
                    return Err(bad(format!("`svm.{field}` is {v}, not a finite number")));
                }
            }
        }
        let model: Model = serde_json::from_value(head).map_err(|e| bad(e.to_string()))?;
        model.validate().map_err(bad)?;
        Ok(model)
    }

    fn validate(&self) -> Result<(), String> {
        let d = self.features.len();
        if d == 0 {
            return Err("no features".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.features.iter().find(|f| !seen.insert(f.as_str())) {
            return Err(format!("feature `{}` appears twice", shown(dup)));
        }
        if self.scaler.transform != TRANSFORM {
            return Err(format!(
                "scaler transform `{}` is unknown (this vmwatch applies `{TRANSFORM}`)",
                shown(&self.scaler.transform)
            ));
        }
        if self.scaler.mean.len() != d || self.scaler.scale.len() != d {
            return Err(format!(
                "scaler has {} values for {d} features",
                self.scaler.mean.len()
            ));
        }
        if !self.scaler.mean.iter().all(|m| m.is_finite()) {
            return Err("scaler has a non-finite mean".into());
        }
        if !self.scaler.scale.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err("scaler has a non-positive or non-finite scale".into());
        }
        if self.svm.kernel != "rbf" {
            return Err(format!(
                "SVM kernel `{}` is not supported (only `rbf`)",
                shown(&self.svm.kernel)
            ));
        }
        if !valid_nu(self.svm.nu) {
            return Err(format!("nu = {} is outside 0 < nu <= 1", self.svm.nu));
        }
        if !valid_gamma(self.svm.gamma) {
            return Err(format!(
                "gamma = {} is not a finite number > 0",
                self.svm.gamma
            ));
        }
        if !self.svm.rho.is_finite() {
            return Err("SVM rho is not finite".into());
        }
        if self.svm.coef.len() != self.svm.support_vectors.len() || self.svm.coef.is_empty() {
            return Err("SVM coefficients and support vectors disagree".into());
        }
        if !self.svm.coef.iter().all(|c| c.is_finite()) {
            return Err("an SVM coefficient is not finite".into());
        }
        if let Some(sv) = self.svm.support_vectors.iter().find(|sv| sv.len() != d) {
            return Err(format!(
                "a support vector has {} values for {d} features",
                sv.len()
            ));
        }
        if !self
            .svm
            .support_vectors
            .iter()
            .flatten()
            .all(|v| v.is_finite())
        {
            return Err("a support vector value is not finite".into());
        }
        for b in &self.training.qemu_builds {
            b.validate()?;
        }
        let Smoothing { k, n } = self.smoothing;
        if k == 0 || k > n {
            return Err(format!(
                "smoothing {k}/{n} needs 1 <= K <= N (K anomalous of the last N windows)"
            ));
        }
        Ok(())
    }
}

/// nu bounds the fraction of training windows outside: 0 < nu <= 1.
pub fn valid_nu(nu: f64) -> bool {
    nu > 0.0 && nu <= 1.0
}

/// The RBF kernel's width: finite and > 0.
pub fn valid_gamma(gamma: f64) -> bool {
    gamma.is_finite() && gamma > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorMessage as _;

    /// Two tight clusters of "normal" windows in 2 features.
    fn normal() -> Array2<f64> {
        let mut v = Vec::new();
        for i in 0..60u32 {
            v.extend([
                100.0 + f64::from(i * 37 % 23),
                1000.0 + 3.0 * f64::from(i * 53 % 31),
            ]);
        }
        Array2::from_shape_vec((60, 2), v).unwrap()
    }

    /// A model of features `a` and `b` fitted on `x` with nu 0.1, gamma 0.5.
    fn fitted(x: &Array2<f64>) -> Model {
        Model::fit(
            vec!["a".into(), "b".into()],
            x.view(),
            0.1,
            0.5,
            Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn decision_matches_linfa_and_flags_outliers() {
        let x = normal();
        let scaler = Scaler::fit(x.view());
        let scaled = scaler.transform(x.view());
        let ours = OneClassSvm::fit(&scaled, 0.1, 0.5).unwrap();
        let dataset = DatasetBase::new(scaled.clone(), Array1::<()>::from_elem(60, ()));
        let theirs: Svm<f64, bool> = Svm::<f64, linfa::dataset::Pr>::params()
            .nu_weight(0.1)
            .eps(1e-3)
            .gaussian_kernel(2.0)
            .fit(&dataset)
            .unwrap();
        for row in scaled.rows() {
            let want = theirs.weighted_sum(&row) - theirs.rho;
            assert!((ours.decision(row) - want).abs() < 1e-9);
        }
        let model = fitted(&x);
        let far = Array2::from_shape_vec((1, 2), vec![5000.0, 3.0]).unwrap();
        assert!(model.decisions(far.view())[0] < 0.0);
        let inside = model.decisions(x.view());
        // nu bounds the fraction of training errors (0.1 of 60 = 6).
        let fp = inside.iter().filter(|d| **d < -1e-9).count();
        assert!(fp <= 8, "{fp} of 60 training windows outside");
    }

    #[test]
    fn model_file_round_trip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let x = normal();
        let model = fitted(&x);
        model.save(&path).unwrap();
        let back = Model::load(&path).unwrap();
        assert_eq!(back.features, model.features);
        assert_eq!(back.decisions(x.view()), model.decisions(x.view()));

        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["version"] = 99.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let err = Model::load(&path).error_message();
        assert!(err.contains("version 99"), "{err}");
        v["version"] = VERSION.into();
        v["scaler"]["mean"] = serde_json::json!([0.0]);
        std::fs::write(&path, v.to_string()).unwrap();
        let err = Model::load(&path).error_message();
        assert!(err.contains("scaler has 1 values for 2 features"), "{err}");
        std::fs::write(&path, "{").unwrap();
        assert!(Model::load(&path).error_message().contains("not JSON"));
        let err = Model::from_json("m", b"[]").error_message();
        assert!(
            err.starts_with("m is not a usable model: no `\"format\""),
            "{err}"
        );
        let bytes = serde_json::to_vec(&model).unwrap();
        let back = Model::from_json("m", &bytes).unwrap();
        assert_eq!(back.decisions(x.view()), model.decisions(x.view()));
    }

    #[test]
    fn qemu_builds_round_trip_and_old_files_load_without_them() {
        let mut model = fitted(&normal());
        let build = QemuBuild::new(Some(&[0x31, 0xe9]), Some("7.2.22".into()));
        model.training.qemu_builds = vec![build.clone(), QemuBuild::new(Some(&[2]), None)];
        let bytes = serde_json::to_vec(&model).unwrap();
        let back = Model::from_json("m", &bytes).unwrap();
        assert_eq!(back.training.qemu_builds, model.training.qemu_builds);
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["training"]["qemu_builds"][0],
            serde_json::json!({"build_id": "31e9", "version": "7.2.22"})
        );
        // A model file of an older vmwatch has no such field.
        v["training"].as_object_mut().unwrap().remove("qemu_builds");
        let old = Model::from_json("m", v.to_string().as_bytes()).unwrap();
        assert!(old.training.qemu_builds.is_empty());
        v["training"]["qemu_builds"] = serde_json::json!([{"build_id": "not hex"}]);
        let err = Model::from_json("m", v.to_string().as_bytes()).error_message();
        assert!(err.contains("QEMU build id `not hex` is not"), "{err}");
    }

    #[test]
    fn a_model_relies_on_the_features_it_saw_nonzero() {
        let mut x = normal();
        x.column_mut(1).fill(0.0);
        let model = fitted(&x);
        assert!(model.relies_on(0));
        assert!(!model.relies_on(1));
        assert!(!model.relies_on(2));
    }

    #[test]
    fn load_rejects_values_nothing_can_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let model = fitted(&normal());
        model.save(&path).unwrap();
        let good: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        type Edit = fn(&mut serde_json::Value);
        let cases: [(Edit, &str); 10] = [
            (
                |v| v["smoothing"] = serde_json::json!({"k": 0, "n": 3}),
                "smoothing 0/3",
            ),
            (
                |v| v["smoothing"] = serde_json::json!({"k": 4, "n": 3}),
                "smoothing 4/3",
            ),
            (
                |v| v["features"] = serde_json::json!(["a", "a"]),
                "feature `a` appears twice",
            ),
            (
                |v| v["scaler"]["transform"] = "sqrt".into(),
                "transform `sqrt`",
            ),
            (|v| v["svm"]["nu"] = 0.0.into(), "nu"),
            (|v| v["svm"]["nu"] = 1.5.into(), "nu"),
            (|v| v["svm"]["gamma"] = serde_json::Value::Null, "gamma"),
            (|v| v["svm"]["gamma"] = (-1.0).into(), "gamma"),
            (|v| v["svm"]["rho"] = serde_json::Value::Null, "rho"),
            (|v| v["svm"]["kernel"] = "linear".into(), "kernel"),
        ];
        for (edit, want) in cases {
            let mut v = good.clone();
            edit(&mut v);
            std::fs::write(&path, v.to_string()).unwrap();
            let err = Model::load(&path).error_message();
            assert!(err.contains("is not a usable model"), "{err}");
            assert!(err.contains(want), "want {want:?}: {err}");
        }
        // Found by tests/fuzz_inputs.rs: a line break in a name from the
        // file split the message.
        let mut v = good.clone();
        v["svm"]["kernel"] = "rbf\nlinear".into();
        let err = Model::from_json("m", v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(r"SVM kernel `rbf\nlinear` is not supported (only `rbf`)"),
            "{err}"
        );
        // What load refuses, save does not write.
        let mut bad = model.clone();
        bad.svm.gamma = f64::INFINITY;
        let err = bad.save(&path).error_message();
        assert!(err.contains("refusing to write"), "{err}");
        assert!(OneClassSvm::fit(&normal(), 0.1, f64::INFINITY).is_err());
    }

    #[test]
    fn smoothing_needs_k_of_the_last_n() {
        let s = Smoothing { k: 2, n: 3 };
        let raw = [true, false, true, false, false, true, true];
        assert_eq!(
            s.apply(&raw),
            [false, false, true, false, false, false, true]
        );
        assert_eq!(Smoothing::default().apply(&raw), raw);
        assert!(s.apply(&[]).is_empty());
    }

    #[test]
    fn smoothing_parses() {
        assert_eq!(
            "3/5".parse::<Smoothing>().unwrap(),
            Smoothing { k: 3, n: 5 }
        );
        assert!("6/5".parse::<Smoothing>().is_err());
        assert_eq!(Smoothing { k: 2, n: 3 }.to_string(), "2/3");
        assert!("x".parse::<Smoothing>().is_err());
    }
}
