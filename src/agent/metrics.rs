//! The agent's Prometheus metrics (names and labels: DESIGN.md, "Agent"),
//! served in the text exposition format on a loopback address by default.
//!
//! `prometheus` (the tikv crate) keeps the metrics and encodes the classic
//! text format that `promtool check metrics` reads; `tiny_http` serves it
//! from one thread, with no async runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::state::Phase;
use crate::error::{Error, Result};

/// Every metric of the agent.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    vm_info: IntGaugeVec,
    vm_state: IntGaugeVec,
    vm_score: GaugeVec,
    vm_anomalous: IntGaugeVec,
    vm_windows: IntCounterVec,
    vm_probe_hits: IntCounterVec,
    vm_probe_cost: GaugeVec,
    vm_over_budget: IntGaugeVec,
    /// The configured budget (absent without one).
    pub probe_budget: Gauge,
    pub drain_seconds: Histogram,
    pub attached_sites: IntGauge,
    pub windows_late: IntCounter,
    pub errors: IntCounterVec,
    pub state_write_errors: IntCounter,
}

/// What one window of one VM adds.
pub struct VmWindow<'a> {
    pub vm: &'a str,
    /// The verdict label: `learning`, `normal` or `anomalous`.
    pub verdict: &'a str,
    pub score: Option<f64>,
    pub anomalous: Option<bool>,
    pub probe_hits: u64,
    pub probe_cost_ratio: f64,
    /// Whether that cost is above the budget (`None`: no budget).
    pub over_budget: Option<bool>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let float_vec = |name: &str, help: &str| {
            let m = GaugeVec::new(Opts::new(name, help), &["vm"]).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let vm_info = gauge_vec(
            "vmwatch_vm_info",
            "1 per VM currently watched.",
            &["vm", "uuid", "pid"],
        );
        let vm_state = gauge_vec(
            "vmwatch_vm_state",
            "1 for the VM's current lifecycle state (learning, training, monitoring).",
            &["vm", "state"],
        );
        let vm_score = float_vec(
            "vmwatch_vm_score",
            "Last window's decision value (negative = outside the normal region).",
        );
        let vm_anomalous = gauge_vec(
            "vmwatch_vm_anomalous",
            "1 when the VM's smoothed verdict is anomalous.",
            &["vm"],
        );
        let vm_windows = counter_vec(
            "vmwatch_vm_windows_total",
            "Windows seen, by verdict (learning, normal, anomalous).",
            &["vm", "verdict"],
        );
        let vm_probe_hits = counter_vec(
            "vmwatch_vm_probe_hits_total",
            "USDT probe hits trapped (what they cost; duty-cycled probes' estimates are not hits).",
            &["vm"],
        );
        let vm_probe_cost = float_vec(
            "vmwatch_vm_probe_cost_ratio",
            "Estimated share of one CPU the VM's probe hits cost (last window).",
        );
        let vm_over_budget = gauge_vec(
            "vmwatch_vm_over_budget",
            "1 when the VM's probe cost (last window) is above vmwatch_probe_budget_ratio.",
            &["vm"],
        );
        let probe_budget = Gauge::new(
            "vmwatch_probe_budget_ratio",
            "Share of one CPU a VM's probe hits may cost (the agent's `budget`).",
        )
        .expect("valid metric");
        let drain_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "vmwatch_drain_seconds",
                "Time to drain the counters of a window.",
            )
            .buckets(prometheus::exponential_buckets(1e-5, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid metric");
        registry
            .register(Box::new(drain_seconds.clone()))
            .expect("unique metric");
        let int_gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let counter = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let attached_sites = int_gauge("vmwatch_attached_sites", "Probe sites attached.");
        let windows_late = counter(
            "vmwatch_windows_late_total",
            "Windows drained after their deadline.",
        );
        let errors = counter_vec("vmwatch_errors_total", "Errors, by kind.", &["kind"]);
        let state_write_errors = counter(
            "vmwatch_state_write_errors_total",
            "Failed writes to the state directory (monitoring goes on).",
        );
        // The agent's own CPU time and memory (process_*).
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Self {
            registry,
            vm_info,
            vm_state,
            vm_score,
            vm_anomalous,
            vm_windows,
            vm_probe_hits,
            vm_probe_cost,
            vm_over_budget,
            probe_budget,
            drain_seconds,
            attached_sites,
            windows_late,
            errors,
            state_write_errors,
        }
    }

    /// A VM is watched (again).
    pub fn vm_seen(&self, vm: &str, uuid: Option<&str>, pid: u32) {
        self.vm_info
            .with_label_values(&[vm, uuid.unwrap_or(""), &pid.to_string()])
            .set(1);
    }

    pub fn vm_phase(&self, vm: &str, phase: Phase) {
        for p in Phase::ALL {
            self.vm_state
                .with_label_values(&[vm, p.name()])
                .set(i64::from(p == phase));
        }
    }

    pub fn vm_window(&self, w: &VmWindow<'_>) {
        self.vm_windows.with_label_values(&[w.vm, w.verdict]).inc();
        self.vm_probe_hits
            .with_label_values(&[w.vm])
            .inc_by(w.probe_hits);
        self.vm_probe_cost
            .with_label_values(&[w.vm])
            .set(w.probe_cost_ratio);
        if let Some(over) = w.over_budget {
            self.vm_over_budget
                .with_label_values(&[w.vm])
                .set(i64::from(over));
        }
        if let Some(score) = w.score {
            self.vm_score.with_label_values(&[w.vm]).set(score);
        }
        if let Some(a) = w.anomalous {
            self.vm_anomalous
                .with_label_values(&[w.vm])
                .set(i64::from(a));
        }
    }

    /// A VM's process is gone: its series go too (its state stays on disk).
    pub fn vm_gone(&self, vm: &str, uuid: Option<&str>, pid: u32) {
        let _ = self
            .vm_info
            .remove_label_values(&[vm, uuid.unwrap_or(""), &pid.to_string()]);
        for p in Phase::ALL {
            let _ = self.vm_state.remove_label_values(&[vm, p.name()]);
        }
        let _ = self.vm_score.remove_label_values(&[vm]);
        let _ = self.vm_anomalous.remove_label_values(&[vm]);
        let _ = self.vm_probe_cost.remove_label_values(&[vm]);
        let _ = self.vm_over_budget.remove_label_values(&[vm]);
        let _ = self.vm_probe_hits.remove_label_values(&[vm]);
        for v in ["learning", "normal", "anomalous"] {
            let _ = self.vm_windows.remove_label_values(&[vm, v]);
        }
    }

    /// Exports the budget (registered only when there is one).
    pub fn set_budget(&self, budget: Option<f64>) {
        if let Some(b) = budget {
            self.probe_budget.set(b);
            let _ = self.registry.register(Box::new(self.probe_budget.clone()));
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into memory cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Serves `GET /metrics` on `addr` from a thread of its own.
    pub fn serve(&self, addr: SocketAddr) -> Result<()> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| Error::Invalid(format!("cannot serve metrics on {addr}: {e}")))?;
        tracing::info!("metrics on http://{addr}/metrics");
        let metrics = Arc::new(self.clone());
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let response = if request.url() == "/metrics" {
                        let header = tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            TextEncoder::new().format_type().as_bytes(),
                        )
                        .expect("valid header");
                        tiny_http::Response::from_data(metrics.render()).with_header(header)
                    } else {
                        tiny_http::Response::from_string("vmwatch agent: see /metrics\n")
                            .with_status_code(404)
                    };
                    if let Err(e) = request.respond(response) {
                        tracing::debug!("answering a metrics request: {e}");
                    }
                }
            })
            .map_err(|e| Error::io("starting the metrics thread", e))?;
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_designed_names() {
        let m = Metrics::new();
        m.vm_seen("web", Some("u-1"), 42);
        m.vm_phase("web", Phase::Monitoring);
        m.vm_window(&VmWindow {
            vm: "web",
            verdict: "anomalous",
            score: Some(-0.25),
            anomalous: Some(true),
            probe_hits: 1000,
            probe_cost_ratio: 0.0005,
            over_budget: Some(false),
        });
        m.set_budget(Some(0.01));
        m.drain_seconds.observe(0.0002);
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            r#"vmwatch_vm_info{pid="42",uuid="u-1",vm="web"} 1"#,
            r#"vmwatch_vm_state{state="monitoring",vm="web"} 1"#,
            r#"vmwatch_vm_state{state="learning",vm="web"} 0"#,
            r#"vmwatch_vm_score{vm="web"} -0.25"#,
            r#"vmwatch_vm_anomalous{vm="web"} 1"#,
            r#"vmwatch_vm_windows_total{verdict="anomalous",vm="web"} 1"#,
            r#"vmwatch_vm_probe_hits_total{vm="web"} 1000"#,
            r#"vmwatch_vm_probe_cost_ratio{vm="web"} 0.0005"#,
            r#"vmwatch_vm_over_budget{vm="web"} 0"#,
            "vmwatch_probe_budget_ratio 0.01",
            "vmwatch_drain_seconds_count 1",
            "vmwatch_attached_sites 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        m.vm_gone("web", Some("u-1"), 42);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains(r#"vm="web""#), "{text}");
    }
}
