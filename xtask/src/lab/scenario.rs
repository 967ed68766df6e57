//! The scenario table: for each scenario of DESIGN.md, its host side (client
//! load, host-side target server, host-side tool) here, and its guest side in
//! the `case` of `guest/init.sh` (started from the kernel command line).

use anyhow::{bail, Result};

use super::load::Profile;

/// What kind of behaviour a scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Normal,
    Stress,
    Attack,
}

impl Group {
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Normal => "normal",
            Group::Stress => "stress",
            Group::Attack => "attack",
        }
    }
}

/// One scenario.
#[derive(Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub group: Group,
    /// Host-side client load on the guest's web shop.
    pub load: Option<Profile>,
    /// Run the host-side web server on 10.77.0.1:80 (target of `-source` attacks).
    pub host_target: bool,
    /// A host-side tool run in the namespace, repeated until the recording
    /// ends; `{vm}` is replaced by the VM's address. Empty: none.
    pub host_tool: &'static [&'static str],
    /// What runs in the guest (documentation; the commands are in init.sh).
    pub guest: &'static str,
}

impl Scenario {
    /// The host tool's argv for a VM at `vm_ip`.
    pub fn host_argv(&self, vm_ip: &str) -> Vec<String> {
        self.host_tool
            .iter()
            .map(|w| w.replace("{vm}", vm_ip))
            .collect()
    }
}

const NONE: &[&str] = &[];

/// Every scenario of DESIGN.md (15 names; issue 3 says 16).
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "idle",
        group: Group::Normal,
        load: None,
        host_target: false,
        host_tool: NONE,
        guest: "the web server, no client",
    },
    Scenario {
        name: "web",
        group: Group::Normal,
        load: Some(Profile::Web),
        host_target: false,
        host_tool: NONE,
        guest: "the web server",
    },
    Scenario {
        name: "web-peak",
        group: Group::Normal,
        load: Some(Profile::Peak),
        host_target: false,
        host_tool: NONE,
        guest: "the web server",
    },
    Scenario {
        name: "stress-mem",
        group: Group::Stress,
        load: None,
        host_target: false,
        host_tool: NONE,
        guest: "stress-ng --vm 1 --vm-bytes 128M",
    },
    Scenario {
        name: "stress-io",
        group: Group::Stress,
        load: None,
        host_target: false,
        host_tool: NONE,
        guest: "stress-ng --io 1",
    },
    Scenario {
        name: "stress-hdd",
        group: Group::Stress,
        load: None,
        host_target: false,
        host_tool: NONE,
        guest: "stress-ng --hdd 1 --hdd-bytes 16M --temp-path /mnt/data",
    },
    Scenario {
        name: "stress-net",
        group: Group::Stress,
        load: None,
        host_target: false,
        host_tool: NONE,
        guest: "ping -A -q -s 1024 10.77.0.1 (adaptive flood ping: next request as soon as the reply arrives)",
    },
    Scenario {
        name: "synflood-source",
        group: Group::Attack,
        load: Some(Profile::Web),
        host_target: true,
        host_tool: NONE,
        guest: "hping3 -q -S -p 80 -i u1000 10.77.0.1 (SYN flood, one packet per ms requested)",
    },
    Scenario {
        name: "synflood-target",
        group: Group::Attack,
        load: Some(Profile::Web),
        host_target: false,
        host_tool: &["hping3", "-q", "-S", "-p", "80", "-i", "u1000", "{vm}"],
        guest: "the web server",
    },
    Scenario {
        name: "bruteforce-source",
        group: Group::Attack,
        load: Some(Profile::Web),
        host_target: true,
        host_tool: NONE,
        guest: "ncrack against http://10.77.0.1/admin/ (basic auth), user admin, ncrack's default.pwd, repeated",
    },
    Scenario {
        name: "bruteforce-target",
        group: Group::Attack,
        load: Some(Profile::Web),
        host_target: false,
        host_tool: &[
            "ncrack",
            "--user",
            "admin",
            "-P",
            "/usr/share/ncrack/default.pwd",
            "-m",
            "http:path=/admin/",
            "http://{vm}",
        ],
        guest: "the web server",
    },
    Scenario {
        name: "slowhttp-source",
        group: Group::Attack,
        load: Some(Profile::Web),
        host_target: true,
        host_tool: NONE,
        guest: "slowhttptest -H -c 200 -r 20 -i 10 -x 24 -l 600 -u http://10.77.0.1/ (slowloris), repeated",
    },
    Scenario {
        name: "slowhttp-target",
        group: Group::Attack,
        load: Some(Profile::Web),
        host_target: false,
        host_tool: &[
            "slowhttptest",
            "-H",
            "-c",
            "200",
            "-r",
            "20",
            "-i",
            "10",
            "-x",
            "24",
            "-l",
            "600",
            "-u",
            "http://{vm}/",
        ],
        guest: "the web server",
    },
    Scenario {
        name: "portscan-source",
        group: Group::Attack,
        load: Some(Profile::Web),
        host_target: true,
        host_tool: NONE,
        guest: "nmap -sS -n -Pn -T4 -p 1-65535 10.77.0.1 (vertical scan), repeated",
    },
    Scenario {
        name: "portscan-target",
        group: Group::Attack,
        load: Some(Profile::Web),
        host_target: false,
        host_tool: &["nmap", "-sS", "-n", "-Pn", "-T4", "-p", "1-65535", "{vm}"],
        guest: "the web server",
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Result<&'static Scenario> {
    match SCENARIOS.iter().find(|s| s.name == name) {
        Some(s) => Ok(s),
        None => bail!(
            "unknown scenario {name:?}; the scenarios are: {}",
            names().join(", ")
        ),
    }
}

pub fn names() -> Vec<&'static str> {
    SCENARIOS.iter().map(|s| s.name).collect()
}

/// The names of one group's scenarios, in the table's order.
pub fn in_group(group: Group) -> Vec<&'static str> {
    SCENARIOS
        .iter()
        .filter(|s| s.group == group)
        .map(|s| s.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_design() {
        assert_eq!(
            names(),
            [
                "idle",
                "web",
                "web-peak",
                "stress-mem",
                "stress-io",
                "stress-hdd",
                "stress-net",
                "synflood-source",
                "synflood-target",
                "bruteforce-source",
                "bruteforce-target",
                "slowhttp-source",
                "slowhttp-target",
                "portscan-source",
                "portscan-target",
            ]
        );
        for s in SCENARIOS {
            match s.group {
                // Attacks run on top of the normal web load, one side each.
                Group::Attack => {
                    assert_eq!(s.load, Some(Profile::Web), "{}", s.name);
                    if s.name.ends_with("-source") {
                        assert!(s.host_target && s.host_tool.is_empty(), "{}", s.name);
                    } else {
                        assert!(s.name.ends_with("-target"), "{}", s.name);
                        assert!(!s.host_target, "{}", s.name);
                        assert!(
                            s.host_tool.contains(&"{vm}")
                                || s.host_tool.iter().any(|w| w.contains("{vm}")),
                            "{}",
                            s.name
                        );
                    }
                }
                Group::Stress => {
                    assert!(
                        s.name.starts_with("stress-") && s.load.is_none(),
                        "{}",
                        s.name
                    )
                }
                Group::Normal => assert!(s.host_tool.is_empty(), "{}", s.name),
            }
        }
    }

    #[test]
    fn host_argv_substitutes_the_vm() {
        let s = find("portscan-target").unwrap();
        let argv = s.host_argv("10.77.0.11");
        assert_eq!(argv.last().map(String::as_str), Some("10.77.0.11"));
        assert!(!argv.iter().any(|w| w.contains('{')));
        assert_eq!(
            find("slowhttp-target")
                .unwrap()
                .host_argv("10.77.0.12")
                .last()
                .map(String::as_str),
            Some("http://10.77.0.12/")
        );
        assert!(find("idle").unwrap().host_argv("x").is_empty());
        assert!(format!("{:#}", find("bogus").unwrap_err()).contains("unknown scenario"));
    }

    #[test]
    fn host_targets_are_inside_the_lab() {
        // Host-side tools aim at the VM only; guest-side ones at 10.77.0.1.
        for s in SCENARIOS {
            for w in s.host_argv("10.77.0.11") {
                if w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.') {
                    assert_eq!(w, "10.77.0.11", "{}", s.name);
                }
            }
        }
    }

    #[test]
    fn guest_init_knows_every_scenario() {
        let init = include_str!("guest/init.sh");
        for s in SCENARIOS {
            assert!(init.contains(s.name), "init.sh does not mention {}", s.name);
        }
        assert!(!init.contains("not implemented yet"));
    }
}
