//! Checks every field of a parsed recovery-domain file and builds the
//! validated [`RecoveryDomain`], collecting every problem with its field path.

use super::raw::{RawDomain, RawMember, RawSite};
use super::{
    check_lease_timing, Member, Mode, NbdAddress, Problem, RecoveryDomain, Site,
    ASYNC_WINDOW_BYTES_DEFAULT, ASYNC_WINDOW_BYTES_MAX, ASYNC_WINDOW_BYTES_MIN,
    DISKS_PER_MEMBER_MAX, FAIL_TIMEOUT_MS_DEFAULT, FAIL_TIMEOUT_MS_MAX, LEASE_MS_DEFAULT,
    LEASE_MS_MAX, LEASE_MS_MIN, MEMBERS_MAX, NAME_BYTES_MAX, SITES_MAX,
};
use crate::ids::ResourceId;
use crate::units::parse_size;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Accumulates problems so the operator sees all of them in one run.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// Validates `raw` into a recovery domain, or returns every problem found.
pub(super) fn validate(raw: RawDomain) -> Result<RecoveryDomain, Vec<Problem>> {
    let mut p = Problems::default();

    check_name(&mut p, "group", &raw.group);
    let mode = match raw.mode.as_str() {
        "sync" => Mode::Sync,
        "async" => Mode::Async,
        other => {
            p.add(
                "mode",
                format!("{other:?} is not a replication mode (expected \"sync\" or \"async\")"),
            );
            Mode::Sync
        }
    };
    if raw.secret.trim().is_empty() {
        p.add(
            "secret",
            "is empty; members need it to authenticate each other",
        );
    }
    let async_window_bytes = match raw.async_window.as_deref() {
        None => ASYNC_WINDOW_BYTES_DEFAULT,
        Some(text) => match parse_size(text) {
            Ok(n) if (ASYNC_WINDOW_BYTES_MIN..=ASYNC_WINDOW_BYTES_MAX).contains(&n) => n,
            Ok(n) => {
                p.add(
                    "async_window",
                    format!(
                        "{n} bytes is out of range ({ASYNC_WINDOW_BYTES_MIN} to {ASYNC_WINDOW_BYTES_MAX})"
                    ),
                );
                ASYNC_WINDOW_BYTES_DEFAULT
            }
            Err(e) => {
                p.add("async_window", e);
                ASYNC_WINDOW_BYTES_DEFAULT
            }
        },
    };

    let (lease_ms, fail_timeout_ms) = check_timing(&mut p, raw.lease_ms, raw.fail_timeout_ms);

    let sites = check_sites(&mut p, raw.site);
    let members = check_members(&mut p, raw.member, &sites);

    if p.0.is_empty() {
        Ok(RecoveryDomain {
            group: raw.group,
            mode,
            secret: raw.secret,
            async_window_bytes,
            lease_ms,
            fail_timeout_ms,
            sites,
            members,
        })
    } else {
        Err(p.0)
    }
}

/// The lease and the failure timeout, each in its range and the pair safe
/// together; defaults for what the file leaves out.
fn check_timing(p: &mut Problems, lease: Option<u64>, fail: Option<u64>) -> (u64, u64) {
    let lease_ms = lease.unwrap_or(LEASE_MS_DEFAULT);
    let fail_timeout_ms = fail.unwrap_or(FAIL_TIMEOUT_MS_DEFAULT);
    let mut ok = true;
    if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) {
        p.add(
            "lease_ms",
            format!("{lease_ms} is out of range ({LEASE_MS_MIN} to {LEASE_MS_MAX})"),
        );
        ok = false;
    }
    if fail_timeout_ms > FAIL_TIMEOUT_MS_MAX {
        p.add(
            "fail_timeout_ms",
            format!("{fail_timeout_ms} is more than {FAIL_TIMEOUT_MS_MAX}"),
        );
        ok = false;
    }
    if ok {
        if let Err(why) = check_lease_timing(lease_ms, fail_timeout_ms) {
            p.add("fail_timeout_ms", why);
        }
    }
    (lease_ms, fail_timeout_ms)
}

/// Names become file names (sockets, state directories): ASCII letters,
/// digits, `-`, `_`, `.`, starting with a letter or digit.
fn check_name(p: &mut Problems, field: &str, name: &str) {
    if name.is_empty() {
        p.add(field, "is empty");
    } else if name.len() > NAME_BYTES_MAX {
        p.add(
            field,
            format!("{name:?} is longer than {NAME_BYTES_MAX} bytes"),
        );
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        p.add(
            field,
            format!(
                "{name:?} is not fit for a file name (use letters, digits, '-', '_', '.', \
                 starting with a letter or digit)"
            ),
        );
    }
}

fn check_sites(p: &mut Problems, raw: Vec<RawSite>) -> Vec<Site> {
    if raw.is_empty() {
        p.add(
            "site",
            "no site: the first [[site]] must name the production resource",
        );
    }
    if raw.len() > SITES_MAX {
        p.add(
            "site",
            format!("{} sites, more than the {SITES_MAX} allowed", raw.len()),
        );
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut resources: HashMap<String, usize> = HashMap::new();
    for (i, s) in raw.iter().enumerate() {
        check_name(p, &format!("site[{i}].name"), &s.name);
        check_name(p, &format!("site[{i}].resource"), &s.resource);
        if let Some(j) = names.insert(s.name.clone(), i) {
            p.add(
                format!("site[{i}].name"),
                format!("{:?} is already the name of site[{j}]", s.name),
            );
        }
        if let Some(j) = resources.insert(s.resource.clone(), i) {
            p.add(
                format!("site[{i}].resource"),
                format!("{:?} is already the resource of site[{j}]", s.resource),
            );
        }
    }
    raw.into_iter()
        .map(|s| Site {
            name: s.name,
            resource: ResourceId(s.resource),
        })
        .collect()
}

fn check_members(p: &mut Problems, raw: Vec<RawMember>, sites: &[Site]) -> Vec<Member> {
    if raw.is_empty() {
        p.add("member", "no member: list at least one [[member]]");
    }
    if raw.len() > MEMBERS_MAX {
        p.add(
            "member",
            format!("{} members, more than the {MEMBERS_MAX} allowed", raw.len()),
        );
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    // Every TCP endpoint a member listens on, and every unix socket path:
    // two listeners on one endpoint cannot both start.
    let mut endpoints: HashMap<String, String> = HashMap::new();
    let mut claim = |p: &mut Problems, field: String, key: String| {
        if let Some(owner) = endpoints.get(&key) {
            p.add(field, format!("{key:?} is already used by {owner}"));
        } else {
            endpoints.insert(key, field);
        }
    };
    let mut members = Vec::with_capacity(raw.len().min(MEMBERS_MAX));
    for (i, m) in raw.into_iter().enumerate() {
        let at = format!("member[{i}]");
        check_name(p, &format!("{at}.name"), &m.name);
        if let Some(j) = names.insert(m.name.clone(), i) {
            p.add(
                format!("{at}.name"),
                format!("{:?} is already the name of member[{j}]", m.name),
            );
        }
        match check_host_port(&m.address) {
            Ok(key) => claim(p, format!("{at}.address"), key),
            Err(e) => p.add(format!("{at}.address"), e),
        }
        if let Some(metrics) = &m.metrics {
            match check_host_port(metrics) {
                Ok(key) => claim(p, format!("{at}.metrics"), key),
                Err(e) => p.add(format!("{at}.metrics"), e),
            }
        }
        let nbd = match m.nbd.as_deref().map(parse_nbd) {
            None => None,
            Some(Ok(addr)) => {
                let key = match &addr {
                    NbdAddress::Unix(path) => format!("unix:{}", path.display()),
                    NbdAddress::Tcp(a) => a.clone(),
                };
                claim(p, format!("{at}.nbd"), key);
                Some(addr)
            }
            Some(Err(e)) => {
                p.add(format!("{at}.nbd"), e);
                None
            }
        };
        let disks = check_disks(p, &at, &m.disks);
        if nbd.is_some() && disks.is_empty() {
            p.add(
                format!("{at}.nbd"),
                "is set on a member without disks; a witness never hosts the volume",
            );
        }
        if let Some(site) = &m.site {
            match sites.iter().position(|s| &s.name == site) {
                None => p.add(format!("{at}.site"), format!("{site:?} is not a [[site]] name")),
                Some(_) if disks.is_empty() => p.add(
                    format!("{at}.site"),
                    format!("is {site:?} but the member has no disks to reach it with"),
                ),
                Some(0) if nbd.is_none() => p.add(
                    format!("{at}.nbd"),
                    format!("is missing: member is at production site {site:?} and must be able to serve the volume"),
                ),
                Some(_) => {}
            }
        }
        members.push(Member {
            name: m.name,
            address: m.address,
            disks,
            nbd,
            metrics: m.metrics,
            site: m.site,
        });
    }
    if !members.is_empty() && members.iter().all(|m| m.nbd.is_none()) {
        p.add(
            "member",
            "no member has an `nbd` address, so the volume could never be served",
        );
    }
    members
}

fn check_disks(p: &mut Problems, at: &str, raw: &[String]) -> Vec<PathBuf> {
    if raw.len() > DISKS_PER_MEMBER_MAX {
        p.add(
            format!("{at}.disks"),
            format!(
                "{} disks, more than the {DISKS_PER_MEMBER_MAX} allowed",
                raw.len()
            ),
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (k, d) in raw.iter().enumerate() {
        if !d.starts_with('/') {
            p.add(
                format!("{at}.disks[{k}]"),
                format!("{d:?} is not an absolute path"),
            );
        }
        if let Some(j) = seen.insert(d.as_str(), k) {
            p.add(
                format!("{at}.disks[{k}]"),
                format!("{d:?} is already disks[{j}]"),
            );
        }
    }
    raw.iter().map(PathBuf::from).collect()
}

/// Checks `HOST:PORT` (an IP address or a DNS name, port 1–65535) and
/// returns it as written, the key used to find endpoints used twice.
fn check_host_port(text: &str) -> Result<String, String> {
    if text.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(text.to_owned());
    }
    let bad = || format!("{text:?} is not a HOST:PORT address (e.g. 10.0.0.1:7401)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if port_ok && host_ok {
        Ok(text.to_owned())
    } else {
        Err(bad())
    }
}

/// `unix:/abs/path`, `tcp:HOST:PORT` or `HOST:PORT`.
fn parse_nbd(text: &str) -> Result<NbdAddress, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!("{text:?}: the unix socket path must be absolute"));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if path.len() > 107 {
            return Err(format!("{text:?}: unix socket path longer than 107 bytes"));
        }
        return Ok(NbdAddress::Unix(PathBuf::from(path)));
    }
    let tcp = text.strip_prefix("tcp:").unwrap_or(text);
    check_host_port(tcp)
        .map(NbdAddress::Tcp)
        .map_err(|_| format!("{text:?} is neither unix:/PATH nor [tcp:]HOST:PORT"))
}
