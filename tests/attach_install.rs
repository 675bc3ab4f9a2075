//! The udev rule, the systemd unit template and `scripts/install.sh`: they
//! parse, they do what they say (the rule's prefix cut runs for real), and
//! the installer stages exactly the files it lists.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// One `KEY{attr} OP "value"` of a udev rule line.
#[derive(Debug)]
struct Triple {
    key: String,
    attr: Option<String>,
    op: String,
    value: String,
}

/// Parses one rule line into triples (udev(7) "Rules files"): items are
/// separated by commas, values are double-quoted.
fn parse_rule_line(line: &str) -> Result<Vec<Triple>, String> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .ok_or_else(|| format!("no operator after {rest:?}"))?;
        let key = rest[..key_end].to_string();
        rest = &rest[key_end..];
        let attr = if let Some(r) = rest.strip_prefix('{') {
            let close = r.find('}').ok_or("unclosed {")?;
            let a = r[..close].to_string();
            rest = &r[close + 1..];
            Some(a)
        } else {
            None
        };
        let op = ["==", "!=", "+=", "-=", ":=", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(|| format!("bad operator at {rest:?}"))?;
        rest = rest[op.len()..]
            .strip_prefix('"')
            .ok_or("value not quoted")?;
        let close = rest.find('"').ok_or("unclosed quote")?;
        let value = rest[..close].to_string();
        rest = rest[close + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
            if rest.is_empty() {
                return Err("trailing comma".into());
            }
        } else if !rest.is_empty() {
            return Err(format!("expected ',' before {rest:?}"));
        }
        out.push(Triple {
            key,
            attr,
            op: op.to_string(),
            value,
        });
    }
    Ok(out)
}

fn rules() -> Vec<Vec<Triple>> {
    read("udev/99-geomirror.rules")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_rule_line(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn udev_rules_are_well_formed_key_operator_value_triples() {
    let match_only: HashSet<&str> = [
        "ACTION",
        "DEVPATH",
        "KERNEL",
        "KERNELS",
        "SUBSYSTEM",
        "SUBSYSTEMS",
        "DRIVER",
        "DRIVERS",
        "ATTRS",
        "TAGS",
        "TEST",
        "RESULT",
        "CONST",
        "PROGRAM",
    ]
    .into();
    let assign_only: HashSet<&str> = [
        "NAME", "SYMLINK", "OWNER", "GROUP", "MODE", "SECLABEL", "RUN", "LABEL", "GOTO", "OPTIONS",
    ]
    .into();
    let either: HashSet<&str> = ["ATTR", "ENV", "TAG", "SYSCTL", "IMPORT"].into();
    let mut labels = HashSet::new();
    let mut gotos = Vec::new();
    for line in rules() {
        for t in &line {
            let is_match = t.op == "==" || t.op == "!=";
            let k = t.key.as_str();
            assert!(
                (match_only.contains(k) && is_match)
                    || (assign_only.contains(k) && !is_match)
                    || either.contains(k),
                "{t:?}: key and operator do not go together"
            );
            let takes_attr = matches!(
                k,
                "ATTR" | "ATTRS" | "ENV" | "SYSCTL" | "IMPORT" | "TEST" | "RUN"
            );
            assert!(
                t.attr.is_none() || takes_attr,
                "{t:?}: key takes no {{attribute}}"
            );
            match k {
                "LABEL" => {
                    labels.insert(t.value.clone());
                }
                "GOTO" => gotos.push(t.value.clone()),
                _ => {}
            }
        }
    }
    assert!(!gotos.is_empty());
    for g in gotos {
        assert!(labels.contains(&g), "GOTO {g:?} has no LABEL");
    }
    // `udevadm verify` exists from systemd 254 on; older udevadm lacks it.
    let has_verify = Command::new("udevadm")
        .args(["verify", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_verify {
        common::run_ok(
            Command::new("udevadm")
                .arg("verify")
                .arg(repo("udev/99-geomirror.rules")),
        );
    }
}

#[test]
fn udev_rule_checker_rejects_malformed_lines() {
    for bad in [
        "KERNEL==nbd*",
        "KERNEL==\"nbd*\" SYMLINK+=\"x\"",
        "KERNEL=~\"nbd*\"",
        "KERNEL==\"nbd*\",",
        "ATTR{backend==\"x\"",
        "kernel==\"x\"",
    ] {
        assert!(parse_rule_line(bad).is_err(), "{bad} accepted");
    }
    let ok = parse_rule_line("ATTR{backend}!=\"g:?*\", GOTO=\"end\"").expect("valid");
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[0].attr.as_deref(), Some("backend"));
    assert_eq!(ok[0].op, "!=");
}

#[test]
fn udev_rule_links_geomirror_backends_by_group_name() {
    let lines = rules();
    let find = |key: &str| {
        lines
            .iter()
            .flatten()
            .find(|t| t.key == key)
            .unwrap_or_else(|| panic!("no {key} in the rules"))
    };
    let backend = lines
        .iter()
        .flatten()
        .find(|t| t.key == "ATTR" && t.attr.as_deref() == Some("backend"))
        .expect("the rules look at ATTR{backend}");
    assert_eq!(backend.value, "geomirror:?*", "matches what attach sets");
    assert_eq!(find("SYMLINK").op, "+=");
    assert_eq!(find("SYMLINK").value, "geomirror/%c");
    assert!(lines
        .iter()
        .flatten()
        .any(|t| t.key == "KERNEL" && t.value.starts_with("nbd")));
    assert!(geomirror::attach::kernel::backend_identifier("g").starts_with("geomirror:"));
}

#[test]
fn udev_program_cuts_the_prefix_off_the_backend_identifier() {
    if !common::require(&["sh", "cut"]) {
        return;
    }
    let program = rules()
        .into_iter()
        .flatten()
        .find(|t| t.key == "PROGRAM")
        .expect("a PROGRAM key")
        .value;
    // Run it as udev would for nbd3, against a stand-in for /sys/class/block.
    let sys = common::tempdir();
    std::fs::create_dir(sys.path().join("nbd3")).expect("mkdir");
    let id = geomirror::attach::kernel::backend_identifier("db-vol.1");
    std::fs::write(sys.path().join("nbd3/backend"), format!("{id}\n")).expect("write backend");
    let cmdline = program
        .replace("$$", "$")
        .replace("%k", "nbd3")
        .replace("/sys/class/block", sys.path().to_str().expect("utf-8"));
    // udev splits the command on spaces, keeping single-quoted parts whole.
    let mut argv = Vec::new();
    let mut rest = cmdline.as_str();
    while !rest.is_empty() {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('\'') {
            let close = r.find('\'').expect("closing quote");
            argv.push(r[..close].to_string());
            rest = &r[close + 1..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            argv.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    let out = common::run_ok(Command::new(&argv[0]).args(&argv[1..]));
    assert_eq!(out.trim(), "db-vol.1");
}

/// Sections and keys of a unit file; panics on lines that are neither.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
        assert!(!section.is_empty(), "{line} before any section");
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

#[test]
fn systemd_unit_runs_one_member_per_instance_and_verifies() {
    let text = read("systemd/geomirror@.service");
    let entries = parse_unit(&text);
    let known: HashSet<(&str, &str)> = [
        ("Unit", "Description Wants After Before ConditionPathExists"),
        (
            "Service",
            "Type Environment EnvironmentFile ExecStart Restart RestartSec KillSignal",
        ),
        (
            "Service",
            "TimeoutStopSec LimitMEMLOCK LimitNOFILE OOMScoreAdjust",
        ),
        ("Install", "WantedBy"),
    ]
    .iter()
    .flat_map(|(s, keys)| keys.split(' ').map(move |k| (*s, k)))
    .collect();
    for (s, k, _) in &entries {
        assert!(
            known.contains(&(s.as_str(), k.as_str())),
            "unexpected [{s}] {k}"
        );
    }
    let get = |k: &str| {
        entries
            .iter()
            .find(|(_, key, _)| key == k)
            .map(|(_, _, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let exec = get("ExecStart");
    assert!(exec.starts_with("/usr/local/bin/geomirror up "), "{exec}");
    assert!(
        exec.contains("--config ${GEOMIRROR_CONFIG}")
            && exec.contains("--member ${GEOMIRROR_MEMBER}")
    );
    assert_eq!(get("EnvironmentFile"), "/etc/geomirror/%i.env");
    assert_eq!(
        get("Environment"),
        "GEOMIRROR_CONFIG=/etc/geomirror/%i.toml"
    );
    assert_eq!(
        get("LimitMEMLOCK"),
        "infinity",
        "the daemon mlocks its memory"
    );

    if !common::have("systemd-analyze") {
        eprintln!("systemd-analyze not installed: checked with our own parser only");
        return;
    }
    // Verify the installed unit, pointed at a binary that exists.
    let dest = common::tempdir();
    install(&[
        "--destdir",
        dest.path().to_str().expect("utf-8"),
        "--prefix",
        "/opt/gm",
    ]);
    let installed =
        std::fs::read_to_string(dest.path().join("etc/systemd/system/geomirror@.service"))
            .expect("installed unit");
    let bin = dest.path().join("opt/gm/bin/geomirror");
    let unit = dest.path().join("geomirror@.service");
    std::fs::write(
        &unit,
        installed.replace("/opt/gm/bin/geomirror", bin.to_str().expect("utf-8")),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values: any message is a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

fn install(args: &[&str]) -> String {
    common::run_ok(
        Command::new(repo("scripts/install.sh"))
            .args(args)
            .args(["--binary", common::bin().to_str().expect("utf-8")]),
    )
}

#[test]
fn install_script_dry_run_changes_nothing_and_real_run_stages_every_file() {
    if !common::require(&["bash", "install", "sed"]) {
        return;
    }
    let dest = common::tempdir();
    let d = dest.path().to_str().expect("utf-8");
    let said = install(&["--destdir", d, "--prefix", "/opt/gm", "--dry-run"]);
    assert!(
        said.contains("would run") && said.contains("dry run"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(dest.path()).expect("readdir").count(),
        0,
        "dry run wrote files"
    );

    install(&["--destdir", d, "--prefix", "/opt/gm"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = |rel: &str| {
        std::fs::metadata(dest.path().join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("opt/gm/bin/geomirror"), 0o755);
    assert_eq!(mode("etc/udev/rules.d/99-geomirror.rules"), 0o644);
    assert_eq!(mode("etc/systemd/system/geomirror@.service"), 0o644);
    assert!(dest.path().join("etc/geomirror").is_dir());
    let unit = std::fs::read_to_string(dest.path().join("etc/systemd/system/geomirror@.service"))
        .expect("unit");
    assert!(
        unit.contains("ExecStart=/opt/gm/bin/geomirror up "),
        "ExecStart follows --prefix"
    );
    assert!(!unit.contains("/usr/local/bin"));
    assert_eq!(
        std::fs::read(dest.path().join("etc/udev/rules.d/99-geomirror.rules")).expect("rules"),
        std::fs::read(repo("udev/99-geomirror.rules")).expect("rules")
    );

    let bad = Command::new(repo("scripts/install.sh"))
        .arg("--frobnicate")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown argument"));
}
