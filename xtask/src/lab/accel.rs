//! Choosing the accelerator: KVM where it boots the lab guest, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: on this project's machines it opens,
//! runs SeaBIOS and produces KVM tracepoint events, but the guest kernel
//! never prints a line. So `--accel auto` boots the guest once under KVM
//! (no network, scenario `idle`) and uses KVM only if it reaches its
//! readiness line in time. The answer is cached per host kernel and QEMU
//! build, so later runs don't pay for the trial boot.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::vm::{self, Accel, Vm, VmConfig};
use crate::qemu;
use crate::util::{self, note};

/// How long a KVM trial boot may take. TCG boots the guest in 10-15 s here;
/// KVM, where it works, in a few seconds.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The accelerator asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if it boots the lab guest on this host (tried once, cached), else TCG.
    Auto,
    /// Binary translation: works everywhere, about 10-50x slower than KVM.
    Tcg,
    /// Hardware virtualization (/dev/kvm), without trying it first.
    Kvm,
}

/// The accelerator to use for `choice`.
pub fn resolve(choice: AccelChoice) -> Result<Accel> {
    match choice {
        AccelChoice::Tcg => Ok(Accel::Tcg),
        AccelChoice::Kvm => Ok(Accel::Kvm),
        AccelChoice::Auto => auto(),
    }
}

fn auto() -> Result<Accel> {
    if !Path::new("/dev/kvm").exists() {
        note("no /dev/kvm: the lab runs under TCG");
        return Ok(Accel::Tcg);
    }
    let qemu = qemu::ensure(&qemu::Options::default()).context("building QEMU failed")?;
    let host = util::output(std::process::Command::new("uname").arg("-r"))?;
    let build = qemu
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cache = super::lab_root()?.join(format!("accel-{}-{build}", host.trim()));
    if let Ok(known) = fs::read_to_string(&cache) {
        match parse(&known) {
            Some(a) => {
                note(format!(
                    "accelerator: {} (KVM trial cached in {})",
                    a.as_str(),
                    cache.display()
                ));
                return Ok(a);
            }
            None => note(format!("ignoring {}: not `kvm` or `tcg`", cache.display())),
        }
    }
    let guest = super::ensure(false).context("building the lab guest failed")?;
    note(format!(
        "trying KVM: booting the lab guest with -accel kvm (at most {}s)",
        TRIAL_TIMEOUT.as_secs()
    ));
    let cfg = VmConfig {
        name: "lab-kvm-trial".into(),
        qemu: qemu.binary.clone(),
        kernel: guest.kernel.clone(),
        initrd: guest.initrd.clone(),
        disk: None,
        scenario: "idle".into(),
        accel: Accel::Kvm,
        memory_mib: 256,
        cpus: 1,
        tap: None,
        netns: None,
        ip: None,
        gateway: None,
        run_parent: super::lab_root()?.join("runs"),
        extra_append: vec![],
    };
    let chosen = match Vm::boot(&cfg).and_then(|mut vm| {
        let took = vm.wait_ready(TRIAL_TIMEOUT)?;
        let _ = vm.shutdown();
        Ok(took)
    }) {
        Ok(took) => {
            note(format!(
                "KVM boots the guest ({:.1}s): the lab uses KVM",
                took.as_secs_f64()
            ));
            Accel::Kvm
        }
        Err(e) => {
            vm::check_interrupted()?;
            note(format!(
                "KVM does not boot the guest here ({}): the lab uses TCG",
                first_line(&format!("{e:#}"))
            ));
            Accel::Tcg
        }
    };
    util::write_atomic(&cache, chosen.as_str().as_bytes())?;
    Ok(chosen)
}

fn parse(s: &str) -> Option<Accel> {
    match s.trim() {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

/// The reason of a failed trial, without the console dump.
fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    line.split("; after ").next().unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_choices_need_no_trial() {
        assert_eq!(resolve(AccelChoice::Tcg).unwrap(), Accel::Tcg);
        assert_eq!(resolve(AccelChoice::Kvm).unwrap(), Accel::Kvm);
    }

    #[test]
    fn cached_answers_parse() {
        assert_eq!(parse("kvm\n"), Some(Accel::Kvm));
        assert_eq!(parse("tcg"), Some(Accel::Tcg));
        assert_eq!(parse("maybe"), None);
        assert_eq!(
            first_line("VM `t`: no line within 30s; after 30.1s, the last lines were:\nx"),
            "VM `t`: no line within 30s"
        );
    }
}
