//! The recovery-domain file: the documented example parses as written, and
//! every validation error names the field that is wrong.

mod common;

use geomirror::config::{
    check_lease_timing, ConfigError, Mode, NbdAddress, RecoveryDomain, LEASE_MARGIN_MS,
};
use geomirror::group::{MemberId, ResourceId};
use std::path::PathBuf;

const EXAMPLE: &str = r#"
group = "payroll"
mode = "sync"                      # sync | async (replication, next issue)
secret = "change-me"               # authenticates members to each other

[[site]]                           # the first site holds the production copy
name = "prod"
resource = "payroll-prod"
[[site]]                           # every other site holds a mirror copy
name = "dr"
resource = "payroll-dr"

[[member]]                         # members in backup order
name = "a1"
address = "127.0.0.1:7401"         # group engine (and replication)
disks = ["/var/lib/geomirror/prod.img"]
nbd = "unix:/run/geomirror/payroll-a1.sock"   # where a1 serves the volume while it hosts production
[[member]]
name = "a2"
address = "127.0.0.1:7402"
disks = ["/var/lib/geomirror/prod.img"]
nbd = "unix:/run/geomirror/payroll-a2.sock"
[[member]]
name = "b1"
address = "127.0.0.1:7403"
disks = ["/var/lib/geomirror/dr.img"]
[[member]]
name = "w1"                        # no disks: a witness that votes and never hosts
address = "127.0.0.1:7404"
"#;

/// The example with `from` replaced by `to` (exactly once).
fn edited(from: &str, to: &str) -> String {
    assert_eq!(EXAMPLE.matches(from).count(), 1, "{from:?} must occur once");
    EXAMPLE.replace(from, to)
}

/// Parses `text`, expects it refused, and returns the message.
fn refused(text: &str) -> String {
    match RecoveryDomain::from_toml_str(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that `text` is refused with a message naming `field` and
/// containing `words`.
fn assert_refused(text: &str, field: &str, words: &str) {
    let msg = refused(text);
    assert!(msg.contains(field), "{msg:?} does not name {field:?}");
    assert!(msg.contains(words), "{msg:?} does not say {words:?}");
}

#[test]
fn documented_example_parses_and_validates() {
    let d = RecoveryDomain::from_toml_str(EXAMPLE).expect("the example is valid");
    assert_eq!(d.group, "payroll");
    assert_eq!(d.mode, Mode::Sync);
    assert_eq!(
        d.async_window_bytes,
        64 << 20,
        "async_window defaults to 64MiB"
    );
    assert_eq!(d.sites.len(), 2);
    assert_eq!(d.production().resource, ResourceId::from("payroll-prod"));
    let names: Vec<&str> = d.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a1", "a2", "b1", "w1"], "members keep backup order");
    assert_eq!(
        d.members[0].nbd,
        Some(NbdAddress::Unix(PathBuf::from(
            "/run/geomirror/payroll-a1.sock"
        )))
    );
    assert!(d.members[3].is_witness());
    assert_eq!(d.member_id("b1"), Some(MemberId(2)));
    assert_eq!(MemberId(2).node_id(), 3, "node id = backup index + 1");
}

#[test]
fn optional_fields_parse() {
    let text = edited("mode = \"sync\"", "mode = \"async\"\nasync_window = \"8M\"")
        .replace(
            "name = \"b1\"\n",
            "name = \"b1\"\nsite = \"dr\"\nmetrics = \"127.0.0.1:9403\"\n",
        )
        .replace(
            "nbd = \"unix:/run/geomirror/payroll-a2.sock\"",
            "nbd = \"tcp:localhost:10809\"",
        );
    let d = RecoveryDomain::from_toml_str(&text).expect("valid");
    assert_eq!(d.mode, Mode::Async);
    assert_eq!(d.async_window_bytes, 8 << 20);
    assert_eq!(d.members[2].site.as_deref(), Some("dr"));
    assert_eq!(d.members[2].metrics.as_deref(), Some("127.0.0.1:9403"));
    assert_eq!(
        d.members[1].nbd,
        Some(NbdAddress::Tcp("localhost:10809".into()))
    );
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let dir = common::tempdir();
    let path = dir.path().join("payroll.toml");
    std::fs::write(&path, EXAMPLE).expect("write");
    let d = RecoveryDomain::load(&path).expect("loads");
    assert_eq!(d.group, "payroll");
    let missing = dir.path().join("absent.toml");
    let msg = RecoveryDomain::load(&missing).unwrap_err().to_string();
    assert!(msg.contains("absent.toml"), "{msg}");
}

#[test]
fn oversized_file_is_refused_before_reading() {
    let dir = common::tempdir();
    let path = dir.path().join("huge.toml");
    std::fs::write(&path, vec![b'#'; 2 << 20]).expect("write");
    let err = RecoveryDomain::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
}

#[test]
fn fingerprint_is_stable_and_tells_files_apart() {
    let a = RecoveryDomain::from_toml_str(EXAMPLE).expect("valid");
    let b = RecoveryDomain::from_toml_str(EXAMPLE).expect("valid");
    assert_eq!(a.fingerprint(), b.fingerprint());
    // Comments and layout do not matter, content does.
    let reformatted = EXAMPLE.replace("# members in backup order", "");
    let c = RecoveryDomain::from_toml_str(&reformatted).expect("valid");
    assert_eq!(a.fingerprint(), c.fingerprint());
    let moved = edited("127.0.0.1:7404", "127.0.0.1:7405");
    let d = RecoveryDomain::from_toml_str(&moved).expect("valid");
    assert_ne!(a.fingerprint(), d.fingerprint());
    // Backup order is part of the domain.
    let swapped = EXAMPLE
        .replace("name = \"a1\"", "name = \"tmp\"")
        .replace("name = \"a2\"", "name = \"a1\"")
        .replace("name = \"tmp\"", "name = \"a2\"");
    let e = RecoveryDomain::from_toml_str(&swapped).expect("valid");
    assert_ne!(a.fingerprint(), e.fingerprint());
}

#[test]
fn fingerprint_leaves_the_secret_out() {
    let a = RecoveryDomain::from_toml_str(EXAMPLE).expect("valid");
    let b = RecoveryDomain::from_toml_str(&edited("change-me", "other")).expect("valid");
    assert_eq!(a.fingerprint(), b.fingerprint());
}

#[test]
fn unknown_field_is_refused_by_name() {
    let text = edited(
        "address = \"127.0.0.1:7403\"",
        "adress = \"127.0.0.1:7403\"",
    );
    assert_refused(&text, "adress", "unknown field");
    let text = edited(
        "group = \"payroll\"",
        "group = \"payroll\"\ncolour = \"red\"",
    );
    assert_refused(&text, "colour", "unknown field");
}

#[test]
fn missing_required_field_is_refused_by_name() {
    let text = edited("secret = \"change-me\"", "");
    assert_refused(&text, "secret", "missing");
}

#[test]
fn duplicate_member_name_is_refused() {
    let text = edited("name = \"b1\"", "name = \"a2\"");
    assert_refused(&text, "member[2].name", "already the name of member[1]");
}

#[test]
fn duplicate_site_name_is_refused() {
    let text = edited("name = \"dr\"", "name = \"prod\"");
    assert_refused(&text, "site[1].name", "already the name of site[0]");
}

#[test]
fn duplicate_resource_is_refused() {
    let text = edited("resource = \"payroll-dr\"", "resource = \"payroll-prod\"");
    assert_refused(&text, "site[1].resource", "already the resource of site[0]");
}

#[test]
fn no_site_is_refused() {
    let text = EXAMPLE
        .replace("[[site]]", "")
        .replace("name = \"prod\"\nresource = \"payroll-prod\"\n", "")
        .replace("name = \"dr\"\nresource = \"payroll-dr\"\n", "");
    assert_refused(&text, "site", "no site");
}

#[test]
fn no_member_is_refused() {
    let cut = EXAMPLE.find("[[member]]").expect("has members");
    assert_refused(&EXAMPLE[..cut], "member", "no member");
}

#[test]
fn unknown_member_site_is_refused() {
    let text = edited("name = \"b1\"\n", "name = \"b1\"\nsite = \"mars\"\n");
    assert_refused(&text, "member[2].site", "\"mars\" is not a [[site]] name");
}

#[test]
fn witness_with_a_site_is_refused() {
    let text = edited("name = \"w1\"", "name = \"w1\"\nsite = \"dr\"");
    assert_refused(&text, "member[3].site", "no disks");
}

#[test]
fn production_member_without_nbd_is_refused() {
    let text = edited("name = \"a2\"\n", "name = \"a2\"\nsite = \"prod\"\n")
        .replace("nbd = \"unix:/run/geomirror/payroll-a2.sock\"\n", "");
    assert_refused(&text, "member[1].nbd", "must be able to serve");
}

#[test]
fn no_nbd_anywhere_is_refused() {
    let text = EXAMPLE
        .replace("nbd = \"unix:/run/geomirror/payroll-a1.sock\"", "")
        .replace("nbd = \"unix:/run/geomirror/payroll-a2.sock\"", "");
    assert_refused(&text, "member", "could never be served");
}

#[test]
fn nbd_on_a_witness_is_refused() {
    let text = edited(
        "address = \"127.0.0.1:7404\"",
        "address = \"127.0.0.1:7404\"\nnbd = \"unix:/run/w1.sock\"",
    );
    assert_refused(&text, "member[3].nbd", "witness");
}

#[test]
fn address_used_twice_is_refused() {
    let text = edited("127.0.0.1:7402", "127.0.0.1:7401");
    assert_refused(
        &text,
        "member[1].address",
        "already used by member[0].address",
    );
}

#[test]
fn metrics_on_a_member_address_is_refused() {
    let text = edited(
        "name = \"b1\"\n",
        "name = \"b1\"\nmetrics = \"127.0.0.1:7404\"\n",
    );
    assert_refused(
        &text,
        "member[3].address",
        "already used by member[2].metrics",
    );
}

#[test]
fn nbd_address_used_twice_is_refused() {
    let text = edited(
        "unix:/run/geomirror/payroll-a2.sock",
        "unix:/run/geomirror/payroll-a1.sock",
    );
    assert_refused(&text, "member[1].nbd", "already used by member[0].nbd");
}

#[test]
fn invalid_address_is_refused() {
    for bad in [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        ":7401",
        "bad host:1",
    ] {
        let text = edited("127.0.0.1:7403", bad);
        assert_refused(&text, "member[2].address", "not a HOST:PORT address");
    }
}

#[test]
fn invalid_nbd_address_is_refused() {
    let text = edited(
        "unix:/run/geomirror/payroll-a2.sock",
        "unix:run/payroll-a2.sock",
    );
    assert_refused(&text, "member[1].nbd", "must be absolute");
    let text = edited("unix:/run/geomirror/payroll-a2.sock", "nbd://x");
    assert_refused(&text, "member[1].nbd", "neither unix:/PATH nor");
}

#[test]
fn bad_mode_is_refused() {
    let text = edited("mode = \"sync\"", "mode = \"fast\"");
    assert_refused(&text, "mode", "\"fast\" is not a replication mode");
}

#[test]
fn empty_secret_is_refused() {
    let text = edited("secret = \"change-me\"", "secret = \"  \"");
    assert_refused(&text, "secret", "is empty");
}

#[test]
fn group_name_unfit_for_a_file_name_is_refused() {
    for bad in ["pay/roll", "../etc", "", ".hidden", "pay roll"] {
        let text = edited("group = \"payroll\"", &format!("group = {bad:?}"));
        assert_refused(&text, "group", "");
        let msg = refused(&text);
        assert!(
            msg.contains("not fit for a file name") || msg.contains("is empty"),
            "{msg}"
        );
    }
}

#[test]
fn member_name_unfit_for_a_file_name_is_refused() {
    let text = edited("name = \"w1\"", "name = \"w/1\"");
    assert_refused(&text, "member[3].name", "not fit for a file name");
}

#[test]
fn bad_async_window_is_refused() {
    let text = edited(
        "mode = \"sync\"",
        "mode = \"async\"\nasync_window = \"64Q\"",
    );
    assert_refused(&text, "async_window", "unknown size suffix");
    let text = edited(
        "mode = \"sync\"",
        "mode = \"async\"\nasync_window = \"100\"",
    );
    assert_refused(&text, "async_window", "out of range");
}

#[test]
fn lease_and_failure_timeout_default_to_a_safe_pair() {
    let d = RecoveryDomain::from_toml_str(EXAMPLE).expect("valid");
    assert_eq!((d.lease_ms, d.fail_timeout_ms), (3_000, 4_000));
    assert!(d.fail_timeout_ms >= d.lease_ms + LEASE_MARGIN_MS);
    let text = edited(
        "mode = \"sync\"",
        "mode = \"sync\"\nlease_ms = 1000\nfail_timeout_ms = 1500",
    );
    let d = RecoveryDomain::from_toml_str(&text).expect("valid");
    assert_eq!((d.lease_ms, d.fail_timeout_ms), (1_000, 1_500));
}

#[test]
fn a_failure_timeout_within_the_lease_and_margin_is_refused() {
    // The group could move production while the old host still holds its lease.
    let text = edited(
        "mode = \"sync\"",
        "mode = \"sync\"\nlease_ms = 1000\nfail_timeout_ms = 1499",
    );
    assert_refused(&text, "fail_timeout_ms", "at least the lease");
    // The lease alone raised past the default failure timeout's reach.
    let text = edited("mode = \"sync\"", "mode = \"sync\"\nlease_ms = 3600");
    assert_refused(&text, "fail_timeout_ms", "plus 500 ms");
    assert!(check_lease_timing(1_000, 1_500).is_ok());
    assert!(check_lease_timing(1_000, 1_499).is_err());
    assert!(check_lease_timing(u64::MAX, u64::MAX).is_err());
}

#[test]
fn a_lease_out_of_range_is_refused() {
    let text = edited("mode = \"sync\"", "mode = \"sync\"\nlease_ms = 399");
    assert_refused(&text, "lease_ms", "out of range");
    let text = edited(
        "mode = \"sync\"",
        "mode = \"sync\"\nlease_ms = 60001\nfail_timeout_ms = 70000",
    );
    assert_refused(&text, "lease_ms", "out of range");
    let text = edited(
        "mode = \"sync\"",
        "mode = \"sync\"\nfail_timeout_ms = 3600001",
    );
    assert_refused(&text, "fail_timeout_ms", "more than");
}

#[test]
fn timing_is_part_of_the_fingerprint_except_at_its_defaults() {
    let plain = RecoveryDomain::from_toml_str(EXAMPLE).expect("valid");
    // Files written before these settings existed keep their fingerprint.
    let spelled_out = edited(
        "mode = \"sync\"",
        "mode = \"sync\"\nlease_ms = 3000\nfail_timeout_ms = 4000",
    );
    let d = RecoveryDomain::from_toml_str(&spelled_out).expect("valid");
    assert_eq!(plain.fingerprint(), d.fingerprint());
    // Members must agree on them: a different pair is another domain.
    let faster = edited(
        "mode = \"sync\"",
        "mode = \"sync\"\nlease_ms = 1000\nfail_timeout_ms = 1500",
    );
    let d = RecoveryDomain::from_toml_str(&faster).expect("valid");
    assert_ne!(plain.fingerprint(), d.fingerprint());
}

#[test]
fn relative_or_repeated_disk_is_refused() {
    let text = edited(
        "disks = [\"/var/lib/geomirror/dr.img\"]",
        "disks = [\"dr.img\"]",
    );
    assert_refused(&text, "member[2].disks[0]", "not an absolute path");
    let text = edited(
        "disks = [\"/var/lib/geomirror/dr.img\"]",
        "disks = [\"/d.img\", \"/d.img\"]",
    );
    assert_refused(&text, "member[2].disks[1]", "already disks[0]");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = edited("mode = \"sync\"", "mode = \"fast\"").replace("change-me", "");
    let msg = refused(&text);
    assert!(msg.contains("mode:") && msg.contains("secret:"), "{msg}");
}

#[test]
fn too_many_members_is_refused() {
    let mut text = EXAMPLE.to_owned();
    for i in 0..61 {
        text.push_str(&format!(
            "[[member]]\nname = \"x{i}\"\naddress = \"127.0.0.1:{}\"\n",
            20000 + i
        ));
    }
    assert_refused(&text, "member", "65 members, more than the 64 allowed");
}

#[test]
fn too_many_sites_is_refused() {
    let mut text = EXAMPLE.to_owned();
    for i in 0..15 {
        text.push_str(&format!("[[site]]\nname = \"s{i}\"\nresource = \"r{i}\"\n"));
    }
    assert_refused(&text, "site", "17 sites, more than the 16 allowed");
}
