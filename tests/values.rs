//! Values that are out of range are refused by the command line with one
//! sentence that names the option, before anything is attached.

mod common;

use common::vmwatch;

fn refused(args: &[&str], option: &str, why: &str) {
    let out = vmwatch().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.contains(option) && first.contains(why),
        "{args:?}: {stderr}"
    );
}

#[test]
fn out_of_range_values_are_refused_with_the_option_named() {
    let rec = |extra: &[&'static str]| {
        let mut a = vec!["record", "--pid", "1", "-o", "/tmp/vmwatch-never.csv"];
        a.extend_from_slice(extra);
        a
    };
    refused(
        &rec(&["--interval", "100000000000000000000s"]),
        "--interval",
        "too long",
    );
    refused(
        &rec(&["--interval", "10000000000000000000s"]),
        "--interval",
        "10ms to 1h",
    );
    refused(
        &rec(&["--interval", "0.000000000001s"]),
        "--interval",
        "10ms to 1h",
    );
    refused(&rec(&["--windows", "0"]), "--windows", "1 or more");
    for budget in ["0", "101", "lots", "NaN", "1e400"] {
        refused(
            &rec(&["--budget", budget]),
            "--budget",
            "not a percentage of one CPU",
        );
    }
    for cost in ["0", "inf", "NaN", "1e9"] {
        refused(
            &rec(&["--hit-cost", cost]),
            "--hit-cost",
            "not a cost in ns",
        );
    }
    refused(
        &["monitor", "--model", "m.json", "--all", "--budget", "0"],
        "--budget",
        "not a percentage",
    );
    refused(&rec(&["--max-vms", "0"]), "--max-vms", "from 1 to 1024");
    refused(
        &rec(&["--max-vms", "4294967295"]),
        "--max-vms",
        "from 1 to 1024",
    );
    refused(
        &["monitor", "--model", "m.json", "--all", "--windows", "0"],
        "--windows",
        "1 or more",
    );
    for folds in ["0", "1"] {
        refused(
            &[
                "eval",
                "--normal",
                "a.csv",
                "--anomaly",
                "b.csv",
                "--folds",
                folds,
            ],
            "--folds",
            "from 2 to 100",
        );
        refused(
            &["train", "a.csv", "-o", "m.json", "--folds", folds],
            "--folds",
            "from 2 to 100",
        );
    }
    assert!(!std::path::Path::new("/tmp/vmwatch-never.csv").exists());
}
