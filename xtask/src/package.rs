//! `cargo xtask package`: the Debian package, and the packaging step of
//! `cargo xtask test`.
//!
//! The package is built by cargo-deb from `[package.metadata.deb]` in the
//! root Cargo.toml (installed with `cargo install` if missing) and checked
//! with dpkg-deb: its fields, maintainer scripts and conffiles, every file
//! it holds with its mode, the shipped copies of `packaging/` byte for byte,
//! and that the binary runs. The packaging step also checks `packaging/`:
//! the systemd unit (`systemd-analyze verify`), the alert rules (`promtool
//! check rules`, `promtool test rules`), the scrape configuration
//! (`promtool check config`) and the Grafana dashboard (its structure, and
//! its PromQL through `promtool check rules`). See docs/AGENT.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::util::{self, note};

/// The cargo-deb release series `[package.metadata.deb]` is written for.
const CARGO_DEB_VERSION: &str = "^3";
const CARGO_DEB_MAJOR: &str = "3";

pub const UNIT: &str = "packaging/vmwatch-agent.service";
pub const CONFIG: &str = "packaging/agent.toml";
pub const RULES: &str = "packaging/vmwatch.rules.yml";
pub const RULES_TEST: &str = "packaging/vmwatch.rules.test.yml";
pub const SCRAPE: &str = "packaging/prometheus.yml";
pub const DASHBOARD: &str = "packaging/grafana-vmwatch.json";

/// The name the unit is installed and enabled under.
const UNIT_NAME: &str = "vmwatch-agent.service";

/// Every file of the package: its path as `dpkg-deb --contents` shows it,
/// its mode, and the repository file it is a copy of (compared byte for
/// byte), if any. A file missing here or in the package fails the check.
const FILES: &[(&str, &str, Option<&str>)] = &[
    ("./usr/bin/vmwatch", "-rwxr-xr-x", None),
    (
        "./usr/lib/systemd/system/vmwatch-agent.service",
        "-rw-r--r--",
        Some(UNIT),
    ),
    ("./etc/vmwatch/agent.toml", "-rw-r--r--", Some(CONFIG)),
    (
        "./usr/share/doc/vmwatch/AGENT.md",
        "-rw-r--r--",
        Some("docs/AGENT.md"),
    ),
    (
        "./usr/share/doc/vmwatch/README.md",
        "-rw-r--r--",
        Some("README.md"),
    ),
    ("./usr/share/doc/vmwatch/copyright", "-rw-r--r--", None),
    (
        "./usr/share/vmwatch/prometheus/vmwatch.rules.yml",
        "-rw-r--r--",
        Some(RULES),
    ),
    (
        "./usr/share/vmwatch/prometheus/vmwatch.rules.test.yml",
        "-rw-r--r--",
        Some(RULES_TEST),
    ),
    (
        "./usr/share/vmwatch/prometheus/prometheus.yml",
        "-rw-r--r--",
        Some(SCRAPE),
    ),
    (
        "./usr/share/vmwatch/grafana/grafana-vmwatch.json",
        "-rw-r--r--",
        Some(DASHBOARD),
    ),
];

/// The metrics the agent exports (DESIGN.md's table and the agent's own
/// additions); the rules, the scrape example and the dashboard may name
/// no other `vmwatch_*` series.
pub const METRICS: &[&str] = &[
    "vmwatch_vm_info",
    "vmwatch_vm_state",
    "vmwatch_vm_score",
    "vmwatch_vm_anomalous",
    "vmwatch_vm_windows_total",
    "vmwatch_vm_probe_cost_ratio",
    "vmwatch_vm_probe_hits_total",
    "vmwatch_vm_over_budget",
    "vmwatch_probe_budget_ratio",
    "vmwatch_drain_seconds_bucket",
    "vmwatch_drain_seconds_sum",
    "vmwatch_drain_seconds_count",
    "vmwatch_attached_sites",
    "vmwatch_windows_late_total",
    "vmwatch_errors_total",
    "vmwatch_state_write_errors_total",
];

/// A built package.
pub struct Package {
    pub deb: PathBuf,
    /// The debug symbols (`vmwatch-dbgsym`).
    pub dbgsym: Option<PathBuf>,
    /// Files in the package.
    pub files: usize,
}

/// `cargo xtask package`: builds the release binary and the .deb
/// (target/debian/), checks it, and prints its path.
pub fn command() -> Result<()> {
    let package = build_and_check()?;
    println!("{}", package.deb.display());
    if let Some(dbgsym) = &package.dbgsym {
        println!("{}", dbgsym.display());
    }
    Ok(())
}

/// Installs cargo-deb if needed, builds the package and checks it.
pub fn build_and_check() -> Result<Package> {
    ensure_cargo_deb()?;
    let root = util::repo_root();
    let mut package = build(&root)?;
    package.files = check(&root, &package.deb)?;
    Ok(package)
}

/// The packaging step of `cargo xtask test`: every check runs, a missing
/// tool is a skip with its reason outside CI and a failure in CI (CI=true).
pub fn test_step() -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let root = util::repo_root();
    let scratch = target_dir(&root).join("xtask-packaging");
    util::remove_dir_if_exists(&scratch)?;
    fs::create_dir_all(&scratch)
        .with_context(|| format!("could not create {}", scratch.display()))?;

    type CheckFn = fn(&Path, &Path) -> Result<()>;
    let checks: [(&str, &[&str], CheckFn); 7] = [
        ("agent.toml", &[], |root, _| check_config(root).map(|_| ())),
        (
            "systemd-analyze verify",
            &["systemd-analyze"],
            check_unit_with_systemd,
        ),
        ("promtool check rules", &["promtool"], |root, _| {
            promtool(
                root,
                &["check", "rules", "--lint=all", "--lint-fatal", RULES],
            )
        }),
        ("promtool test rules", &["promtool"], |root, _| {
            promtool(root, &["test", "rules", RULES_TEST])
        }),
        ("promtool check config", &["promtool"], |root, _| {
            promtool(
                root,
                &["check", "config", "--lint=all", "--lint-fatal", SCRAPE],
            )
        }),
        (
            "dashboard PromQL",
            &["promtool"],
            check_dashboard_with_promtool,
        ),
        (
            "cargo xtask package",
            &["dpkg-deb", "dpkg-shlibdeps", "objcopy", "readelf"],
            |_, _| build_and_check().map(|_| ()),
        ),
    ];

    let started = Instant::now();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    let mut times = Vec::new();
    for (name, tools, check) in checks {
        let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
        if !missing.is_empty() {
            let why = format!(
                "{} not found (Debian packages in xtask/packages.txt, section packaging: `cargo xtask deps`)",
                missing.join(", ")
            );
            if ci {
                eprintln!("xtask: packaging: {name} failed: {why}");
                failed.push(name);
            } else {
                note(format!("packaging: {name} SKIPPED: {why}; CI requires it"));
                skipped.push(name);
            }
            continue;
        }
        let t = Instant::now();
        match check(&root, &scratch) {
            Ok(()) => times.push(format!("{name} {}", util::human_duration(t.elapsed()))),
            Err(e) => {
                eprintln!("xtask: packaging: {name} failed: {e:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("packaging check(s) failed: {}", failed.join(", "));
    }
    note(format!(
        "packaging: {} checks passed in {}{} ({})",
        times.len(),
        util::human_duration(started.elapsed()),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(", {} skipped", skipped.len())
        },
        times.join(", ")
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// The package

/// Installs cargo-deb unless a 3.x one is installed.
fn ensure_cargo_deb() -> Result<()> {
    let version = Command::new(cargo())
        .args(["deb", "--version"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    // "cargo-deb 3.8.0"
    let major = version
        .as_deref()
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.split('.').next());
    if major == Some(CARGO_DEB_MAJOR) {
        return Ok(());
    }
    note("installing cargo-deb (about 2 minutes on 2 cores)");
    util::run_inherit(Command::new(cargo()).args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
    .context("installing cargo-deb failed")
}

/// `cargo deb`: the release build of the vmwatch binary and the .deb (and
/// the -dbgsym .ddeb) in target/debian/.
fn build(root: &Path) -> Result<Package> {
    let started = Instant::now();
    note("package: building the release binary and the .deb (cargo deb)");
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root).args(["deb", "--locked"]);
    let out = capture(&mut cmd)?;
    let mut deb = None;
    let mut dbgsym = None;
    for line in out.lines().map(str::trim) {
        if line.ends_with(".ddeb") {
            dbgsym = Some(PathBuf::from(line));
        } else if line.ends_with(".deb") {
            deb = Some(PathBuf::from(line));
        }
    }
    let deb = deb.with_context(|| format!("`cargo deb` named no .deb file:\n{out}"))?;
    note(format!(
        "package: {} built in {}",
        deb.display(),
        util::human_duration(started.elapsed())
    ));
    Ok(Package {
        deb,
        dbgsym,
        files: 0,
    })
}

/// Checks a built .deb; returns the number of files it holds.
fn check(root: &Path, deb: &Path) -> Result<usize> {
    let deb_arg = deb.as_os_str();

    // Control fields.
    let fields = capture(Command::new("dpkg-deb").arg("--field").arg(deb_arg).args([
        "Package",
        "Depends",
        "Description",
    ]))?;
    let fields = parse_fields(&fields);
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    ensure!(
        get("Package") == "vmwatch",
        "the package is called {:?}, not vmwatch",
        get("Package")
    );
    let depends = depends_names(get("Depends"));
    for needed in ["libc6", "libelf1"] {
        ensure!(
            depends.contains(needed),
            "Depends ({:?}) lacks {needed}: did cargo-deb's $auto (dpkg-shlibdeps) run?",
            get("Depends")
        );
    }
    let synopsis = get("Description");
    ensure!(
        !synopsis.is_empty() && synopsis.chars().count() <= 80,
        "the Description's first line (from Cargo.toml's description) must be 1 to 80 characters: {synopsis:?}"
    );

    // Conffiles and the maintainer scripts that enable, start, restart and
    // stop the unit.
    let conffiles = control_file(deb, "conffiles")?;
    ensure!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/vmwatch/agent.toml"),
        "/etc/vmwatch/agent.toml is not a conffile (conffiles: {conffiles:?})"
    );
    let postinst = control_file(deb, "postinst")?;
    for needed in [
        format!("deb-systemd-helper enable {UNIT_NAME}"),
        format!("deb-systemd-invoke $_dh_action {UNIT_NAME}"),
    ] {
        ensure!(
            postinst.contains(&needed),
            "postinst does not run `{needed}`"
        );
    }
    let prerm = control_file(deb, "prerm")?;
    ensure!(
        prerm.contains(&format!("deb-systemd-invoke stop {UNIT_NAME}")),
        "prerm does not stop {UNIT_NAME}"
    );
    let postrm = control_file(deb, "postrm")?;
    ensure!(
        postrm.contains(&format!("deb-systemd-helper purge {UNIT_NAME}")),
        "postrm does not purge {UNIT_NAME}'s enablement"
    );

    // Files, modes and owners.
    let listing = capture(Command::new("dpkg-deb").arg("--contents").arg(deb_arg))?;
    let contents = parse_contents(&listing)?;
    check_contents(&contents)?;

    // The files themselves.
    let extracted = target_dir(root).join("xtask-package-contents");
    util::remove_dir_if_exists(&extracted)?;
    capture(
        Command::new("dpkg-deb")
            .arg("--extract")
            .arg(deb_arg)
            .arg(&extracted),
    )?;
    for (path, _, source) in FILES {
        let Some(source) = source else { continue };
        let shipped = extracted.join(path);
        let a =
            fs::read(&shipped).with_context(|| format!("could not read {}", shipped.display()))?;
        let b = fs::read(root.join(source)).with_context(|| format!("could not read {source}"))?;
        ensure!(
            a == b,
            "{path} in the package differs from {source}: rebuild the package"
        );
    }
    let binary = extracted.join("usr/bin/vmwatch");
    let version = capture(Command::new(&binary).arg("--version"))?;
    ensure!(
        version.starts_with("vmwatch "),
        "`vmwatch --version` from the package printed {version:?}"
    );
    let sections = capture(Command::new("readelf").arg("-S").arg(&binary))?;
    ensure!(
        !sections.contains(".debug_info"),
        "the packaged binary keeps its debug info: it belongs in vmwatch-dbgsym"
    );
    util::remove_dir_if_exists(&extracted)?;
    Ok(contents
        .values()
        .filter(|e| e.mode.starts_with('-'))
        .count())
}

/// One line of `dpkg-deb --contents`.
#[derive(Debug, PartialEq)]
struct Entry {
    mode: String,
    owner: String,
}

/// `-rw-r--r-- 0/0  1841 2026-12-01 00:00 ./etc/vmwatch/agent.toml` → path →
/// mode and owner.
fn parse_contents(listing: &str) -> Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        ensure!(
            parts.len() >= 6,
            "unexpected line in `dpkg-deb --contents`: {line:?}"
        );
        // A symbolic link ends in `-> target`; nothing here is one.
        let path = parts[5..].join(" ");
        out.insert(
            path,
            Entry {
                mode: parts[0].to_string(),
                owner: parts[1].to_string(),
            },
        );
    }
    Ok(out)
}

fn check_contents(contents: &BTreeMap<String, Entry>) -> Result<()> {
    let mut problems = Vec::new();
    for (path, mode, _) in FILES {
        match contents.get(*path) {
            None => problems.push(format!("{path} is missing")),
            Some(e) if e.mode != *mode => {
                problems.push(format!("{path} has mode {}, not {mode}", e.mode))
            }
            Some(_) => {}
        }
    }
    let listed: BTreeSet<&str> = FILES.iter().map(|f| f.0).collect();
    for (path, e) in contents {
        if !matches!(e.owner.as_str(), "0/0" | "root/root") {
            problems.push(format!("{path} is owned by {}, not root", e.owner));
        }
        if !e.mode.starts_with('d') && !listed.contains(path.as_str()) {
            problems.push(format!(
                "{path} is in the package but not in xtask/src/package.rs's FILES"
            ));
        }
    }
    if !problems.is_empty() {
        bail!("the package's contents are wrong: {}", problems.join("; "));
    }
    Ok(())
}

/// `Key: value` lines of `dpkg-deb --field` (continuation lines dropped: the
/// Description's first line is its synopsis).
fn parse_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Package names of a Depends field: `libc6 (>= 2.34), libelf1 (>= 0.144)`.
fn depends_names(depends: &str) -> BTreeSet<String> {
    depends
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// A control member of the .deb (`dpkg-deb --info DEB NAME`).
fn control_file(deb: &Path, name: &str) -> Result<String> {
    capture(Command::new("dpkg-deb").arg("--info").arg(deb).arg(name))
        .with_context(|| format!("the package has no {name}"))
}

// ---------------------------------------------------------------------------
// packaging/

/// `systemd-analyze verify` on the unit, and its capability names against
/// the ones this systemd knows (unknown names are dropped with no warning).
///
/// verify insists that ExecStart's binary exists, so it runs on a copy of
/// the unit whose `/usr/bin/vmwatch` is an executable stub in `scratch`
/// (nothing else changes; the package check compares the shipped unit with
/// packaging/ byte for byte). verify exits 0 on settings it ignores, so any
/// line it prints about the unit fails the check too.
fn check_unit_with_systemd(root: &Path, scratch: &Path) -> Result<()> {
    let text =
        fs::read_to_string(root.join(UNIT)).with_context(|| format!("could not read {UNIT}"))?;
    let unit = parse_unit(&text);
    let dir = scratch.join("systemd");
    fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let stub = dir.join("vmwatch");
    fs::write(&stub, "#!/bin/sh\nexit 0\n")
        .with_context(|| format!("could not write {}", stub.display()))?;
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("could not make {} executable", stub.display()))?;
    let stub_path = stub.to_str().context("the scratch path is not UTF-8")?;
    ensure!(
        text.contains("/usr/bin/vmwatch "),
        "{UNIT} does not run /usr/bin/vmwatch"
    );
    let copy = dir.join(UNIT_NAME);
    fs::write(
        &copy,
        text.replace("/usr/bin/vmwatch ", &format!("{stub_path} ")),
    )
    .with_context(|| format!("could not write {}", copy.display()))?;

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .context("could not run systemd-analyze")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("vmwatch-agent"))
        .collect();
    if !out.status.success() || !about_unit.is_empty() {
        bail!(
            "`systemd-analyze verify {}` ({}): {}",
            copy.display(),
            out.status,
            said.trim()
        );
    }

    let known: BTreeSet<String> = capture(Command::new("systemd-analyze").arg("capability"))?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_ascii_lowercase)
        .collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        for cap in unit_words(&unit, key) {
            ensure!(
                known.contains(&cap.to_ascii_lowercase()),
                "{UNIT}: {key}={cap} is a capability this systemd does not know (it would be dropped silently)"
            );
        }
    }
    Ok(())
}

/// packaging/agent.toml is TOML. Its keys and values are the agent's to
/// judge: `src/agent/config.rs` tests that the agent reads this very file
/// as its defaults.
fn check_config(root: &Path) -> Result<toml::Table> {
    let text = fs::read_to_string(root.join(CONFIG))
        .with_context(|| format!("could not read {CONFIG}"))?;
    text.parse()
        .with_context(|| format!("{CONFIG} is not valid TOML"))
}

/// The dashboard's structure, then every PromQL expression it holds (panel
/// targets and variable queries, Grafana's variables replaced by values)
/// as a recording rule for `promtool check rules`.
fn check_dashboard_with_promtool(root: &Path, scratch: &Path) -> Result<()> {
    let exprs = dashboard_exprs(&read_dashboard(root)?)?;
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (what, expr)) in exprs.iter().enumerate() {
        let expr = grafana_to_promql(expr);
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!(
            "      # {}\n      - record: dashboard_expr_{i}\n        expr: {}\n",
            what.replace('\n', " "),
            serde_json::to_string(&expr)?
        ));
    }
    let path = scratch.join("dashboard.rules.yml");
    fs::write(&path, rules).with_context(|| format!("could not write {}", path.display()))?;
    let path = path.to_str().context("the scratch path is not UTF-8")?;
    promtool(root, &["check", "rules", path]).context("the dashboard's PromQL is invalid")
}

fn promtool(root: &Path, args: &[&str]) -> Result<()> {
    capture(Command::new("promtool").current_dir(root).args(args)).map(|_| ())
}

fn read_dashboard(root: &Path) -> Result<Value> {
    let text = fs::read_to_string(root.join(DASHBOARD))
        .with_context(|| format!("could not read {DASHBOARD}"))?;
    serde_json::from_str(&text).with_context(|| format!("{DASHBOARD} is not valid JSON"))
}

/// Checks what Grafana (9 and later) needs to import the dashboard and what
/// it promises (a `vm` variable, every per-VM query filtered by it, known
/// metric names); returns every PromQL expression with where it is.
fn dashboard_exprs(dash: &Value) -> Result<Vec<(String, String)>> {
    let mut problems = Vec::new();
    for key in ["title", "uid"] {
        if dash[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no {key}"));
        }
    }
    if dash["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push("schemaVersion is not at least 36 (Grafana 9)".into());
    }
    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => problems.push("no `datasource` variable of Prometheus data sources".into()),
    }
    for name in ["instance", "vm"] {
        if !var(name).is_some_and(|v| v["type"] == "query") {
            problems.push(format!("no `{name}` query variable"));
        }
    }

    let mut exprs = Vec::new();
    for v in &vars {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?");
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or("");
        // label_values(SELECTOR, label)
        match query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
        {
            Some((selector, _)) => {
                exprs.push((format!("variable {name}"), selector.trim().to_string()))
            }
            None => problems.push(format!(
                "variable {name}: {query:?} is not label_values(SELECTOR, LABEL)"
            )),
        }
    }

    let panels = dash["panels"].as_array().cloned().unwrap_or_default();
    if panels.is_empty() {
        problems.push("no panels".into());
    }
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("").to_string();
        let what = format!("panel {title:?}");
        match p["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            _ => problems.push(format!("{what}: id missing or not unique")),
        }
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_u64();
        match (n("x"), n("y"), n("w"), n("h")) {
            (Some(x), Some(_), Some(w), Some(h)) if w >= 1 && h >= 1 && x + w <= 24 => {}
            _ => problems.push(format!(
                "{what}: gridPos is not x, y, w, h within 24 columns"
            )),
        }
        if p["type"] == "row" {
            continue;
        }
        if p["type"].as_str().is_none_or(str::is_empty) || title.is_empty() {
            problems.push(format!("{what}: no type or no title"));
        }
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{what}: data source is not ${{datasource}}"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{what}: no query"));
        }
        let mut refs = BTreeSet::new();
        for t in &targets {
            if !t["refId"]
                .as_str()
                .is_some_and(|r| refs.insert(r.to_string()))
            {
                problems.push(format!("{what}: refId missing or repeated"));
            }
            if t["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "{what}: a query's data source is not ${{datasource}}"
                ));
            }
            let Some(expr) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                problems.push(format!("{what}: a query has no expr"));
                continue;
            };
            let per_vm = metric_names(expr)
                .iter()
                .any(|m| m.starts_with("vmwatch_vm_"));
            if per_vm && !expr.contains("vm=~\"$vm\"") {
                problems.push(format!(
                    "{what}: a per-VM query ignores the vm variable: {expr}"
                ));
            }
            exprs.push((what.clone(), expr.to_string()));
        }
    }
    for (what, expr) in &exprs {
        for m in unknown_metrics(expr) {
            problems.push(format!("{what}: {m} is not a vmwatch metric"));
        }
    }
    if !problems.is_empty() {
        bail!("{DASHBOARD}: {}", problems.join("; "));
    }
    Ok(exprs)
}

/// A Grafana query as plain PromQL: its variables replaced by values.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$vm", ".*")
}

/// The `vmwatch_*` names in a text (PromQL, YAML, JSON): identifiers of
/// letters, digits, `_` and `:` that start with `vmwatch_`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("vmwatch_"))
        .map(str::to_string)
        .collect()
}

/// Names in `text` that look like vmwatch metrics but are none of [`METRICS`]
/// (the histogram's own name is one).
fn unknown_metrics(text: &str) -> Vec<String> {
    metric_names(text)
        .into_iter()
        .filter(|m| !METRICS.contains(&m.as_str()) && m != "vmwatch_drain_seconds")
        .collect()
}

/// A unit file's `Key=value` settings (every occurrence, in order).
fn parse_unit(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with(['#', ';', '[']) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

/// The space-separated words of every `key=` line of a unit.
fn unit_words(unit: &BTreeMap<String, Vec<String>>, key: &str) -> Vec<String> {
    unit.get(key)
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------
// Helpers

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The target directory cargo (and cargo-deb) use.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"))
}

/// Whether `tool` is an executable file in a directory of PATH.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Runs a command quietly; returns its stdout, or fails with everything it
/// printed.
fn capture(cmd: &mut Command) -> Result<String> {
    let shown = util::display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{shown}` failed ({}):\n{}",
            out.status,
            format!("{stdout}\n{stderr}").trim()
        );
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(rel: &str) -> String {
        fs::read_to_string(util::repo_root().join(rel)).unwrap()
    }

    #[test]
    fn dashboard_is_importable_and_uses_known_metrics() {
        let exprs = dashboard_exprs(&read_dashboard(&util::repo_root()).unwrap()).unwrap();
        assert!(exprs.len() >= 15, "{} queries", exprs.len());
        let all: String = exprs.iter().map(|(_, e)| e.as_str()).collect();
        for m in [
            "vmwatch_vm_state",
            "vmwatch_vm_score",
            "vmwatch_vm_anomalous",
            "vmwatch_vm_windows_total",
            "vmwatch_vm_probe_cost_ratio",
            "vmwatch_drain_seconds_bucket",
            "vmwatch_windows_late_total",
        ] {
            assert!(all.contains(m), "the dashboard does not show {m}");
        }
    }

    #[test]
    fn dashboard_problems_are_found() {
        let mut dash = read_dashboard(&util::repo_root()).unwrap();
        dash["templating"]["list"]
            .as_array_mut()
            .unwrap()
            .retain(|v| v["name"] != "vm");
        let panel = dash["panels"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|p| p["title"] == "Score")
            .unwrap();
        panel["targets"][0]["expr"] = "vmwatch_vm_scroe".into();
        let err = dashboard_exprs(&dash).unwrap_err().to_string();
        assert!(err.contains("no `vm` query variable"), "{err}");
        assert!(
            err.contains("vmwatch_vm_scroe is not a vmwatch metric"),
            "{err}"
        );
        assert!(err.contains("ignores the vm variable"), "{err}");
    }

    #[test]
    fn rules_and_scrape_config_name_only_known_metrics() {
        for file in [RULES, RULES_TEST, SCRAPE] {
            let unknown = unknown_metrics(&read(file));
            assert!(unknown.is_empty(), "{file}: unknown metrics {unknown:?}");
        }
        assert_eq!(
            unknown_metrics(
                "vmwatch_drain_seconds_bucket vmwatch_vm_scroe instance:vmwatch_vms:count"
            ),
            ["vmwatch_vm_scroe"]
        );
    }

    #[test]
    fn grafana_variables_become_promql() {
        assert_eq!(
            grafana_to_promql(r#"rate(x{vm=~"$vm", instance=~"$instance"}[$__rate_interval])"#),
            r#"rate(x{vm=~".*", instance=~".*"}[1m])"#
        );
    }

    #[test]
    fn default_config_has_the_agreed_keys() {
        let table = check_config(&util::repo_root()).unwrap();
        let s = |k: &str| table[k].as_str().unwrap().to_string();
        assert_eq!(s("state_dir"), "/var/lib/vmwatch");
        assert_eq!(s("metrics"), "127.0.0.1:9477");
        assert_eq!(s("interval"), "2s");
        assert_eq!(s("smoothing"), "2/3");
        assert_eq!(s("events"), "-");
        assert_eq!(table["learn_windows"].as_integer(), Some(300));
        assert_eq!(table["include"].as_array().unwrap().len(), 1);
        assert!(table["exclude"].as_array().unwrap().is_empty());
        // `features` is optional and documented in a comment.
        assert!(!table.contains_key("features"));
        assert!(read(CONFIG).contains("# features = "));
    }

    #[test]
    fn unit_matches_the_package_and_the_config() {
        let unit = parse_unit(&read(UNIT));
        let one = |k: &str| {
            let v = unit.get(k).unwrap_or_else(|| panic!("{UNIT}: no {k}="));
            assert_eq!(v.len(), 1, "{UNIT}: {k}= more than once");
            v[0].clone()
        };
        assert_eq!(
            one("ExecStart"),
            "/usr/bin/vmwatch agent --config /etc/vmwatch/agent.toml"
        );
        assert_eq!(one("User"), "root");
        assert_eq!(one("StateDirectory"), "vmwatch");
        assert_eq!(one("StateDirectoryMode"), "0700");
        assert_eq!(one("RuntimeDirectory"), "vmwatch");
        assert_eq!(one("RuntimeDirectoryPreserve"), "yes");
        assert_eq!(one("ProtectSystem"), "strict");
        assert_eq!(one("NoNewPrivileges"), "yes");
        assert_eq!(one("KillSignal"), "SIGTERM");
        assert_eq!(one("TimeoutStopSec"), "10");
        assert_eq!(one("Restart"), "on-failure");
        let bounding: BTreeSet<String> = unit_words(&unit, "CapabilityBoundingSet")
            .into_iter()
            .collect();
        let ambient: BTreeSet<String> = unit_words(&unit, "AmbientCapabilities")
            .into_iter()
            .collect();
        assert_eq!(bounding, ambient);
        let expected: BTreeSet<String> = [
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
            "CAP_DAC_OVERRIDE",
        ]
        .map(String::from)
        .into();
        assert_eq!(bounding, expected);
        // The state directory is the config's, and the package installs
        // the config where ExecStart reads it and the unit under its name.
        assert!(read(CONFIG).contains("state_dir = \"/var/lib/vmwatch\""));
        assert!(FILES.iter().any(|f| f.0 == "./etc/vmwatch/agent.toml"));
        assert!(FILES
            .iter()
            .any(|f| f.0 == format!("./usr/lib/systemd/system/{UNIT_NAME}")));
    }

    #[test]
    fn cargo_deb_metadata_lists_every_file() {
        let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
        let deb = &manifest["package"]["metadata"]["deb"];
        assert_eq!(deb["depends"].as_str(), Some("$auto"));
        let assets: Vec<(String, String)> = deb["assets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let a = a.as_array().unwrap();
                (a[0].as_str().unwrap().into(), a[1].as_str().unwrap().into())
            })
            .collect();
        for (path, _, source) in FILES {
            let Some(source) = source else { continue };
            if *source == UNIT {
                continue; // installed by systemd-units
            }
            let dest = path.trim_start_matches("./");
            let listed = assets.iter().any(|(src, d)| {
                src == source
                    && (d == dest
                        || (d.ends_with('/')
                            && dest
                                == format!(
                                    "{d}{}",
                                    Path::new(source).file_name().unwrap().to_str().unwrap()
                                )))
            });
            assert!(
                listed,
                "[package.metadata.deb] assets lack {source} -> {dest}"
            );
        }
        let units = &deb["systemd-units"];
        assert_eq!(units["unit-name"].as_str(), Some("vmwatch-agent"));
        assert_eq!(units["unit-scripts"].as_str(), Some("packaging"));
    }

    #[test]
    fn contents_are_parsed_and_checked() {
        let listing = "\
drwxr-xr-x 0/0               0 2026-12-01 00:00 ./usr/
-rwxr-xr-x 0/0         4175168 2026-12-01 00:00 ./usr/bin/vmwatch
";
        let c = parse_contents(listing).unwrap();
        assert_eq!(
            c["./usr/bin/vmwatch"],
            Entry {
                mode: "-rwxr-xr-x".into(),
                owner: "0/0".into()
            }
        );
        let err = check_contents(&c).unwrap_err().to_string();
        assert!(err.contains("./etc/vmwatch/agent.toml is missing"), "{err}");

        let mut full: BTreeMap<String, Entry> = FILES
            .iter()
            .map(|(p, m, _)| {
                (
                    p.to_string(),
                    Entry {
                        mode: m.to_string(),
                        owner: "0/0".into(),
                    },
                )
            })
            .collect();
        check_contents(&full).unwrap();
        full.insert(
            "./usr/share/doc/vmwatch/stray".into(),
            Entry {
                mode: "-rw-r--r--".into(),
                owner: "1000/1000".into(),
            },
        );
        let err = check_contents(&full).unwrap_err().to_string();
        assert!(err.contains("stray is in the package but not in"), "{err}");
        assert!(err.contains("owned by 1000/1000"), "{err}");
    }

    #[test]
    fn control_fields() {
        let f = parse_fields(
            "Package: vmwatch\nDepends: libc6 (>= 2.34), libelf1 (>= 0.144) | libelf, zlib1g\nDescription: short\n long text\n",
        );
        assert_eq!(f["Description"], "short");
        assert_eq!(
            depends_names(&f["Depends"]),
            ["libc6", "libelf", "libelf1", "zlib1g"]
                .map(String::from)
                .into()
        );
    }
}
