//! The agent's configuration: a TOML file (default
//! `/etc/vmwatch/agent.toml`, optional), every key with a default, and the
//! command line's overrides on top.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vmwatch_core::features::FeatureList;
use vmwatch_core::model::Smoothing;
use vmwatch_core::train::Grid;

use crate::error::{Error, Result};

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/vmwatch/agent.toml";

/// The features learned when the configuration names none: the project's
/// cost-budgeted selection (`vmwatch select --budget 0.5` on the lab data),
/// shipped inside the binary.
pub const DEFAULT_FEATURES: &str = include_str!("../../packaging/features.txt");

/// Keys as they are written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    state_dir: Option<PathBuf>,
    metrics: Option<String>,
    interval: Option<String>,
    learn_windows: Option<u64>,
    features: Option<PathBuf>,
    smoothing: Option<String>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    events: Option<PathBuf>,
    max_vms: Option<u32>,
    grid: Option<String>,
    folds: Option<usize>,
    hit_cost_ns: Option<f64>,
    budget: Option<BudgetValue>,
}

/// `budget = 1` (percent) or `budget = "none"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BudgetValue {
    Percent(f64),
    Word(String),
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// One folder per VM, the control socket.
    pub state_dir: PathBuf,
    /// Where the Prometheus metrics are served; `None`: not at all.
    pub metrics: Option<SocketAddr>,
    pub interval: Duration,
    /// Windows a new VM learns before it is trained.
    pub learn_windows: u64,
    /// Features counted and learned, and the probes their `seq:` features
    /// are counted among.
    pub features: FeatureList,
    /// Where they came from, for logs.
    pub features_from: String,
    pub smoothing: Smoothing,
    /// VM name patterns.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// JSON-lines events: a file, `-` for stdout, or none.
    pub events: Option<PathBuf>,
    pub max_vms: u32,
    pub grid: Grid,
    pub folds: usize,
    /// CPU time one probe hit costs, in ns, for the budget and the probe
    /// cost metric; `None`: measured at start-up.
    pub hit_cost_ns: Option<f64>,
    /// Share of one CPU (0.01 = 1%) a VM's probe hits may cost: the cost
    /// governor duty-cycles hot probes to stay within it, and a VM above it
    /// anyway is logged and flagged in the metrics. `None`: every probe
    /// exact.
    pub budget: Option<f64>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/vmwatch"),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9477))),
            interval: Duration::from_secs(2),
            learn_windows: 300,
            features: vmwatch_core::features::parse_feature_list(
                "the built-in features",
                DEFAULT_FEATURES,
            )
            .expect("the built-in feature list parses"),
            features_from: "the built-in selection".into(),
            smoothing: Smoothing::RECOMMENDED,
            include: vec!["*".into()],
            exclude: Vec::new(),
            events: None,
            max_vms: crate::bpf::DEFAULT_MAX_VMS,
            grid: Grid::Paper,
            folds: 5,
            hit_cost_ns: None,
            budget: Some(DEFAULT_BUDGET_PERCENT / 100.0),
        }
    }
}

impl AgentConfig {
    /// The configuration of `path`, or of [`DEFAULT_CONFIG`] when it exists
    /// and no path is given, else the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let path = match path {
            Some(p) => Some(p.to_owned()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = vmwatch_core::limits::read_file(&path, 1 << 20, "a configuration file")?;
        let text = String::from_utf8(text)
            .map_err(|_| Error::Invalid(format!("{} is not UTF-8 text", path.display())))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses configuration text (`name` for messages).
    pub fn parse(name: &str, text: &str) -> Result<Self> {
        let file: File = toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("{name}: {}", e.message().trim_end())))?;
        let bad = |key: &str, why: String| Error::Invalid(format!("{name}: `{key}`: {why}"));
        let mut c = Self::default();
        if let Some(v) = file.state_dir {
            c.state_dir = v;
        }
        if let Some(v) = file.metrics {
            c.metrics = parse_metrics(&v).map_err(|e| bad("metrics", e))?;
        }
        if let Some(v) = file.interval {
            c.interval =
                vmwatch_core::window::parse_interval(&v).map_err(|e| bad("interval", e))?;
        }
        if let Some(v) = file.learn_windows {
            c.learn_windows = check_learn_windows(v).map_err(|e| bad("learn_windows", e))?;
        }
        if let Some(path) = file.features {
            c.features = vmwatch_core::features::read_feature_list(&path)?;
            c.features_from = path.display().to_string();
        }
        if let Some(v) = file.smoothing {
            c.smoothing = v.parse().map_err(|e| bad("smoothing", e))?;
        }
        if let Some(v) = file.include {
            c.include = v;
        }
        if let Some(v) = file.exclude {
            c.exclude = v;
        }
        c.events = file.events.filter(|p| !p.as_os_str().is_empty());
        if let Some(v) = file.max_vms {
            if !(1..=crate::bpf::MAX_VMS).contains(&v) {
                return Err(bad(
                    "max_vms",
                    format!("{v} is not from 1 to {}", crate::bpf::MAX_VMS),
                ));
            }
            c.max_vms = v;
        }
        if let Some(v) = file.grid {
            c.grid = v.parse().map_err(|e| bad("grid", e))?;
        }
        if let Some(v) = file.folds {
            if !(2..=100).contains(&v) {
                return Err(bad("folds", format!("{v} is not from 2 to 100")));
            }
            c.folds = v;
        }
        if let Some(v) = file.hit_cost_ns {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad("hit_cost_ns", format!("{v} is not a positive number")));
            }
            c.hit_cost_ns = Some(v);
        }
        if let Some(v) = file.budget {
            let text = match v {
                BudgetValue::Percent(p) => p.to_string(),
                BudgetValue::Word(w) => w,
            };
            c.budget = parse_budget(&text).map_err(|e| bad("budget", e))?;
        }
        Ok(c)
    }
}

pub use vmwatch_core::govern::{parse_budget, DEFAULT_BUDGET_PERCENT};

/// `metrics`: an address to listen on, or `none`.
pub fn parse_metrics(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "none" || s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("`{s}` is not an address and port (e.g. 127.0.0.1:9477) or `none`"))
}

/// Learning needs enough windows for cross-validation (2 folds of 5).
pub fn check_learn_windows(n: u64) -> Result<u64, String> {
    if n < vmwatch_core::train::MIN_TRAINING_WINDOWS as u64 {
        return Err(format!(
            "{n} windows are too few to learn from (at least {})",
            vmwatch_core::train::MIN_TRAINING_WINDOWS
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_key() {
        let d = AgentConfig::parse("empty", "").unwrap();
        assert_eq!(d.state_dir, Path::new("/var/lib/vmwatch"));
        assert_eq!(d.metrics, Some("127.0.0.1:9477".parse().unwrap()));
        assert_eq!(d.learn_windows, 300);
        assert!(!d.features.features.is_empty());
        let c = AgentConfig::parse(
            "t",
            r#"
            state_dir = "/tmp/s"
            metrics = "none"
            interval = "500ms"
            learn_windows = 20
            smoothing = "3/5"
            include = ["web-*"]
            exclude = ["web-test"]
            events = "-"
            max_vms = 8
            grid = "wide"
            folds = 3
            hit_cost_ns = 850
            budget = 0.5
            "#,
        )
        .unwrap();
        assert_eq!(c.metrics, None);
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!((c.smoothing.k, c.smoothing.n), (3, 5));
        assert_eq!(c.include, ["web-*"]);
        assert_eq!(c.events.as_deref(), Some(Path::new("-")));
        assert_eq!((c.max_vms, c.folds), (8, 3));
        assert_eq!(c.budget, Some(0.005));
        assert_eq!(d.budget, Some(0.01));
        let none = AgentConfig::parse("t", "budget = \"none\"").unwrap();
        assert_eq!(none.budget, None);
    }

    #[test]
    fn the_shipped_configuration_is_the_defaults() {
        let shipped = include_str!("../../packaging/agent.toml");
        let c = AgentConfig::parse("packaging/agent.toml", shipped).unwrap();
        let d = AgentConfig::default();
        assert_eq!(c.state_dir, d.state_dir);
        assert_eq!(c.metrics, d.metrics);
        assert_eq!(c.interval, d.interval);
        assert_eq!(c.learn_windows, d.learn_windows);
        assert_eq!(c.features, d.features);
        assert_eq!(c.smoothing, d.smoothing);
        assert_eq!((c.include, c.exclude), (d.include, d.exclude));
        assert_eq!((c.max_vms, c.grid, c.folds), (d.max_vms, d.grid, d.folds));
        assert_eq!((c.hit_cost_ns, c.budget), (d.hit_cost_ns, d.budget));
        // Only `events` differs: the service sends them to the journal.
        assert_eq!(c.events.as_deref(), Some(Path::new("-")));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, want) in [
            (
                "learn_windows = 3",
                "`learn_windows`: 3 windows are too few",
            ),
            ("interval = \"1h1m\"", "`interval`"),
            (
                "metrics = \"nowhere\"",
                "`metrics`: `nowhere` is not an address",
            ),
            ("smoothing = \"4/3\"", "`smoothing`"),
            ("typo = 1", "unknown field `typo`"),
            ("folds = 1", "`folds`: 1 is not from 2 to 100"),
            ("budget = 0", "`budget`: `0` is not a percentage"),
            ("budget = \"lots\"", "`budget`: `lots` is not a percentage"),
        ] {
            let err = AgentConfig::parse("agent.toml", text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("agent.toml: "), "{text}: {err}");
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains('\n'), "{text}: {err}");
        }
    }
}
