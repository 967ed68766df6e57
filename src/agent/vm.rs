//! One VM's lifecycle in the agent: *learning* (its windows appended to its
//! own training set), *training* (the grid search of `vmwatch train`, queued
//! to the agent's [`Trainer`] so the other VMs go on), *monitoring* (a smoothed
//! verdict per window), and learning again on `ctl relearn`. A VM whose
//! QEMU lacks features its model relies on is not judged with the rest:
//! it learns anew on that QEMU.

use std::sync::mpsc::{self, Receiver, TryRecvError};

use vmwatch_core::dataset::{DatasetWriter, Row, Table};
use vmwatch_core::features::FeatureList;
use vmwatch_core::model::{Model, Smoothing};
use vmwatch_core::train::{self, FeatureChoice, SvmParams, TrainConfig, TrainingSet};
use vmwatch_core::verdict::Judge;

use super::state::{Phase, VmDir, VmKey, VmMeta};
use super::trainer::Trainer;
use crate::counter::BinaryFacts;
use crate::error::Result;

/// What a VM's windows are learned and judged with.
#[derive(Debug, Clone)]
pub struct Learning {
    /// The columns of the rows the VM's windows come in.
    pub features: Vec<String>,
    /// What models learn: the configured features among those columns
    /// (not the extra transitions of its tracked set), and that set.
    pub learn: FeatureList,
    pub learn_windows: u64,
    pub smoothing: Smoothing,
    pub params: SvmParams,
    pub folds: usize,
    /// Where models are fitted.
    pub trainer: Trainer,
}

/// A VM the agent knows, running or not.
pub struct Vm {
    pub meta: VmMeta,
    dir: VmDir,
    pub pid: Option<u32>,
    /// Open while learning.
    writer: Option<DatasetWriter>,
    pub windows_learned: u64,
    judge: Option<Judge<()>>,
    /// The process the judge was last checked against (its QEMU has the
    /// model's features): checked again for another process or model.
    checked: Option<u32>,
    training: Option<Receiver<Result<Model>>>,
    pub score: Option<f64>,
    pub anomalous: Option<bool>,
    pub probe_cost_ratio: Option<f64>,
    /// Its probe cost was above the budget at the last window.
    pub over_budget: bool,
    /// Failed writes to the state directory not yet counted in the metrics.
    write_errors: u64,
}

/// What one window did to a VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// `learning`, `normal` or `anomalous` (the verdict label of the
    /// windows metric).
    pub verdict: &'static str,
    pub score: Option<f64>,
    pub anomalous: Option<bool>,
}

impl Vm {
    /// The VM of `key`, as the state directory left it, or a new one that
    /// starts learning.
    pub fn load(
        dir: VmDir,
        key: VmKey,
        name: &str,
        uuid: Option<&str>,
        how: &Learning,
    ) -> Result<Self> {
        let recorded = dir.meta().unwrap_or_else(|e| {
            tracing::warn!(
                "VM {name}: {}; starting it over",
                vmwatch_core::error::chain(&e)
            );
            None
        });
        let meta = match recorded {
            Some(mut m) => {
                m.name = name.to_string();
                m
            }
            None => VmMeta {
                key,
                name: name.to_string(),
                uuid: uuid.map(str::to_string),
                phase: Phase::Learning,
                learn_until: how.learn_windows,
                trained_on: None,
            },
        };
        let mut vm = Self {
            meta,
            dir,
            pid: None,
            writer: None,
            windows_learned: 0,
            judge: None,
            checked: None,
            training: None,
            score: None,
            anomalous: None,
            probe_cost_ratio: None,
            over_budget: false,
            write_errors: 0,
        };
        vm.resume(how)?;
        Ok(vm)
    }

    /// Picks up where the recorded phase left off.
    fn resume(&mut self, how: &Learning) -> Result<()> {
        self.windows_learned = learned_rows(&self.dir);
        match self.meta.phase {
            Phase::Monitoring => match Model::load(&self.dir.model()) {
                Ok(model) => {
                    self.judge = Some(Judge::new(
                        model,
                        &how.features,
                        how.smoothing,
                        &self.meta.name,
                    )?);
                }
                Err(e) => {
                    tracing::warn!(
                        "VM {}: {}; learning again",
                        self.meta.name,
                        vmwatch_core::error::chain(&e)
                    );
                    self.relearn(how)?;
                }
            },
            // Killed while training: the windows are there, train again.
            Phase::Training => self.start_training(how),
            Phase::Learning => {
                if let Err(e) = self.open_training_set(how) {
                    self.write_failed(e);
                }
            }
        }
        self.save_or_note();
        Ok(())
    }

    /// A write to the state directory failed (a full disk, a read-only
    /// one): said once here, counted in the metrics; the VM goes on, in
    /// memory (a learning window is lost).
    fn write_failed(&mut self, e: crate::Error) {
        tracing::warn!(
            "VM {}: {} (the agent goes on; what could not be written is lost)",
            self.meta.name,
            vmwatch_core::error::chain(&e)
        );
        self.write_errors += 1;
    }

    fn save_or_note(&mut self) {
        if let Err(e) = self.save() {
            self.write_failed(e);
        }
    }

    /// Failed writes since the last call.
    pub fn take_write_errors(&mut self) -> u64 {
        std::mem::take(&mut self.write_errors)
    }

    /// Opens the training set for appending; one of other columns (the
    /// configured features changed) is set aside and learning starts over.
    fn open_training_set(&mut self, how: &Learning) -> Result<()> {
        let path = self.dir.training();
        vmwatch_core::atomic::private_dir(self.dir.path())?;
        match DatasetWriter::append(&path, &how.features) {
            Ok((w, rows)) => {
                self.writer = Some(w);
                self.windows_learned = rows;
            }
            Err(e @ vmwatch_core::Error::OtherColumns { .. }) => {
                let aside = path.with_extension("csv.old");
                tracing::warn!(
                    "VM {}: {}; setting it aside as {} and learning again",
                    self.meta.name,
                    vmwatch_core::error::chain(&e),
                    aside.display()
                );
                std::fs::rename(&path, &aside)
                    .map_err(|e| crate::Error::io(format!("cannot move {}", path.display()), e))?;
                let (w, _) = DatasetWriter::append(&path, &how.features)?;
                self.writer = Some(w);
                self.windows_learned = 0;
                self.meta.learn_until = how.learn_windows;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    pub fn phase(&self) -> Phase {
        self.meta.phase
    }

    fn save(&self) -> Result<()> {
        self.dir.save(&self.meta)
    }

    /// Takes one window of the VM (`row`: its counts in the learning
    /// columns; `binary`: what its QEMU can count).
    pub fn window(&mut self, row: &Row<'_>, binary: &BinaryFacts, how: &Learning) -> Outcome {
        if self.meta.phase == Phase::Monitoring && self.checked != Some(row.pid) {
            self.checked = Some(row.pid);
            self.check_qemu(row.pid, binary, how);
        }
        match self.meta.phase {
            Phase::Learning => {
                if let Err(e) = self.learn(row, how) {
                    self.write_failed(e);
                }
                LEARNING
            }
            Phase::Training => LEARNING,
            Phase::Monitoring => {
                let judge = self.judge.as_mut().expect("a monitoring VM has a model");
                let (score, anomalous) = judge.judge(std::iter::once(((), row.counts)))[0];
                self.score = Some(score);
                self.anomalous = Some(anomalous);
                let verdict = if anomalous { "anomalous" } else { "normal" };
                Outcome {
                    verdict,
                    score: Some(score),
                    anomalous: Some(anomalous),
                }
            }
        }
    }

    /// Whether the VM's QEMU (process `pid`) can give the model what it
    /// was trained on. Missing features the model relies on would be read
    /// as zero, which is not the model's judgement: the VM then learns
    /// anew on this QEMU (its training set set aside), and is judged once
    /// it is trained on it. Missing features that were zero in every
    /// training window, and another QEMU build, are only logged.
    fn check_qemu(&mut self, pid: u32, binary: &BinaryFacts, how: &Learning) {
        let Some(judge) = &self.judge else { return };
        let name = &self.meta.name;
        if judge.model().trained_on(&binary.qemu) == Some(false) {
            tracing::warn!(
                "VM {name} (PID {pid}): its QEMU is {}, not one its model was trained on ({}); \
                 its verdicts may differ (`vmwatch ctl relearn {name}` learns it on this QEMU)",
                binary.qemu,
                builds(&judge.model().training.qemu_builds)
            );
        }
        let coverage = judge.coverage(&binary.lacking);
        let Some(what) = coverage.describe() else {
            return;
        };
        if coverage.is_usable() {
            tracing::warn!("VM {name} (PID {pid}): {what}");
            return;
        }
        let aside = self.dir.training().with_extension("csv.old");
        tracing::warn!(
            "VM {name} (PID {pid}): {what}; it is not judged with a model that lacks them: \
             learning it anew on this QEMU (its training set is kept as {})",
            aside.display()
        );
        if let Err(e) = self.start_over(how, &aside) {
            self.write_failed(e);
        }
    }

    /// Learning from scratch, the training set moved to `aside`.
    fn start_over(&mut self, how: &Learning, aside: &std::path::Path) -> Result<()> {
        self.judge = None;
        self.checked = None;
        self.training = None;
        self.score = None;
        self.anomalous = None;
        self.writer = None;
        self.windows_learned = 0;
        self.meta.trained_on = None;
        self.meta.phase = Phase::Learning;
        self.meta.learn_until = how.learn_windows;
        let path = self.dir.training();
        match std::fs::rename(&path, aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(crate::Error::io(
                    format!("cannot move {}", path.display()),
                    e,
                ))
            }
        }
        let opened = self.open_training_set(how);
        self.save()?;
        opened
    }

    fn learn(&mut self, row: &Row<'_>, how: &Learning) -> Result<()> {
        let writer = match &mut self.writer {
            Some(w) => w,
            None => {
                // The last write failed (a full disk): try again.
                self.open_training_set(how)?;
                self.writer.as_mut().expect("opened above")
            }
        };
        if let Err(e) = writer.write_row(row).and_then(|()| writer.flush()) {
            self.writer = None;
            return Err(e.into());
        }
        self.windows_learned += 1;
        if self.windows_learned >= self.meta.learn_until {
            self.start_training(how);
            self.save_or_note();
        }
        Ok(())
    }

    /// Fits the model on a thread: the same grid search as `vmwatch train`.
    fn start_training(&mut self, how: &Learning) {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.finish() {
                tracing::warn!("VM {}: {}", self.meta.name, vmwatch_core::error::chain(&e));
            }
        }
        self.meta.phase = Phase::Training;
        self.judge = None;
        self.checked = None;
        let (tx, rx) = mpsc::channel();
        let (path, model_path, name) = (
            self.dir.training(),
            self.dir.model(),
            self.meta.name.clone(),
        );
        let how = how.clone();
        let trainer = how.trainer.clone();
        let queued = trainer.submit(move || {
            let t = std::time::Instant::now();
            let result = fit(&path, &how).and_then(|model| {
                model.save(&model_path)?;
                Ok(model)
            });
            if result.is_ok() {
                tracing::info!("VM {name}: trained in {:.2?}", t.elapsed());
            }
            let _ = tx.send(result.map_err(Into::into));
        });
        if queued {
            self.training = Some(rx);
        } else {
            tracing::error!(
                "VM {}: cannot train: the training pool is gone",
                self.meta.name
            );
        }
        tracing::info!(
            "VM {}: learned {} windows, training",
            self.meta.name,
            self.windows_learned
        );
    }

    /// Whether a training that was running has finished; on success the VM
    /// monitors, on failure it learns more windows first.
    pub fn poll_training(&mut self, how: &Learning) -> Option<Result<()>> {
        let rx = self.training.as_ref()?;
        let result = match rx.try_recv() {
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(crate::Error::Invalid(
                "the training thread ended without a model".into(),
            )),
            Ok(r) => r,
        };
        self.training = None;
        let outcome = match result {
            Ok(model) => match Judge::new(model, &how.features, how.smoothing, &self.meta.name) {
                Ok(judge) => {
                    self.judge = Some(judge);
                    self.checked = None;
                    self.meta.phase = Phase::Monitoring;
                    self.meta.trained_on = Some(self.windows_learned);
                    tracing::info!("VM {}: monitoring", self.meta.name);
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            tracing::warn!(
                "VM {}: training failed ({}); learning {} more windows",
                self.meta.name,
                vmwatch_core::error::chain(e),
                how.learn_windows
            );
            self.meta.phase = Phase::Learning;
            self.meta.learn_until = self.windows_learned + how.learn_windows;
            if let Err(e) = self.open_training_set(how) {
                self.write_failed(e);
            }
        }
        self.save_or_note();
        Some(outcome)
    }

    /// `ctl relearn`: learn a new period on top of the windows kept, then
    /// retrain on all of them (the paper's re-learning, section 5.2).
    pub fn relearn(&mut self, how: &Learning) -> Result<()> {
        self.judge = None;
        self.checked = None;
        self.training = None;
        self.score = None;
        self.anomalous = None;
        self.meta.phase = Phase::Learning;
        self.meta.learn_until = self.windows_learned + how.learn_windows;
        self.open_training_set(how)?;
        self.save()
    }

    /// Everything learned, for `ctl export`.
    pub fn export(&self) -> Result<super::ctl::Bundle> {
        Ok(super::ctl::Bundle {
            format: super::ctl::BUNDLE_FORMAT.into(),
            version: 1,
            meta: self.meta.clone(),
            training: read_text(&self.dir.training())?,
            model: read_text(&self.dir.model())?,
        })
    }

    /// `ctl forget`: everything learned goes; a running VM starts over.
    pub fn forget(&mut self, how: &Learning) -> Result<()> {
        self.writer = None;
        self.dir.remove()?;
        self.windows_learned = 0;
        self.meta.trained_on = None;
        self.relearn(how)
    }

    /// The VM's folder is gone for good (a forgotten VM that is not running).
    pub fn remove(self) -> Result<()> {
        drop(self.writer);
        self.dir.remove()
    }
}

const LEARNING: Outcome = Outcome {
    verdict: "learning",
    score: None,
    anomalous: None,
};

/// The builds a model lists, for messages.
fn builds(list: &[vmwatch_core::qemu::QemuBuild]) -> String {
    let shown: Vec<String> = list.iter().map(|b| b.to_string()).collect();
    shown.join("; ")
}

/// A file's text, `None` when it does not exist.
fn read_text(path: &std::path::Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::Error::read(path, e)),
    }
}

/// Complete rows of the VM's training set (0 when it has none).
fn learned_rows(dir: &VmDir) -> u64 {
    if !dir.training().exists() {
        return 0;
    }
    Table::read(&dir.training()).map_or(0, |t| t.len() as u64)
}

/// Trains on the training set at `path`.
fn fit(path: &std::path::Path, how: &Learning) -> vmwatch_core::Result<Model> {
    let table = Table::read(path)?;
    let set = TrainingSet::new(&table, &FeatureChoice::List(how.learn.clone()))?;
    let config = TrainConfig {
        params: how.params,
        folds: how.folds,
        smoothing: how.smoothing,
        files: vec![path.display().to_string()],
    };
    Ok(train::train(set, &config, &|| {})?.model)
}
