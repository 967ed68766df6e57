//! `cargo xtask demo`: the README's main job. Until the lab (guest OS,
//! workloads, attacks) and the detector exist, it shows the collector on a
//! real VM: it boots the instrumented QEMU under TCG (SeaBIOS and iPXE, no
//! guest OS), records it with `vmwatch record`, and summarises what the
//! probes saw.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util::{self, note};
use crate::{deps, qemu};

const VM_NAME: &str = "vmwatch-demo";

/// Kills the demo VM however the demo ends.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(windows: u32) -> Result<()> {
    if !util::is_root()? {
        bail!("the demo attaches eBPF programs: run it as root");
    }
    deps::ensure().context("setting up the system packages failed")?;
    let build = qemu::ensure(&qemu::Options::default()).context("building QEMU failed")?;

    note("building vmwatch (release)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = util::repo_root();
    util::run_inherit(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "vmwatch",
    ]))?;
    let vmwatch = root.join("target/release/vmwatch");

    note(format!(
        "booting VM `{VM_NAME}` under TCG (SeaBIOS + iPXE, no guest OS yet)"
    ));
    let vm = Vm(Command::new(&build.binary)
        .args(["-M", "pc", "-accel", "tcg", "-m", "128", "-name"])
        .arg(format!("guest={VM_NAME}"))
        .args(["-display", "none", "-serial", "null", "-monitor", "none"])
        .args([
            "-netdev",
            "user,id=n0,restrict=on",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", build.binary.display()))?);
    std::thread::sleep(Duration::from_millis(300));

    util::run_inherit(Command::new(&vmwatch).arg("list"))?;

    let dir = std::env::temp_dir().join(format!("vmwatch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("demo.csv");
    note(format!(
        "recording {windows} windows of 2 s with every QEMU probe"
    ));
    util::run_inherit(
        Command::new(&vmwatch)
            .args([
                "record",
                "--vm",
                VM_NAME,
                "--label",
                "bios-boot",
                "--windows",
            ])
            .arg(windows.to_string())
            .arg("-o")
            .arg(&csv),
    )?;
    drop(vm);
    summarise(&csv)?;
    note(format!("rows kept in {}", csv.display()));
    Ok(())
}

/// Prints, per window, how many probes fired and the busiest ones.
fn summarise(csv: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty dataset")?.split(',').collect();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    println!("\nwindow  active probes  probe hits");
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let mut active = 0;
        let mut hits = 0u64;
        for (name, v) in header.iter().zip(&cells).skip(6) {
            let v: u64 = v.parse().unwrap_or(0);
            if v > 0 {
                active += 1;
                hits += v;
                *totals.entry(name).or_default() += v;
            }
        }
        println!(
            "{:>6}  {active:>13}  {hits:>10}",
            cells.get(3).unwrap_or(&"?")
        );
    }
    let mut top: Vec<_> = totals.into_iter().collect();
    top.sort_by_key(|e| std::cmp::Reverse(e.1));
    println!("\nbusiest probes over the recording:");
    for (name, n) in top.iter().take(10) {
        println!("  {n:>10}  {name}");
    }
    println!(
        "\n{} of {} probes fired. Under TCG, exec_tb and its kin count translated-block \
         executions; a KVM host would not see them.",
        top.len(),
        header.len() - 6
    );
    Ok(())
}
