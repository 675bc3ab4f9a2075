//! Where the export lives: parses the `--nbd` address forms (`unix:PATH`,
//! `HOST:PORT`, `nbd://HOST[:PORT]/NAME`, `nbd+unix:///NAME?socket=PATH`).

use super::error::AttachError;
use std::fmt;
use std::path::PathBuf;

/// The IANA port of NBD (doc/proto.md, "Protocol phases").
pub const NBD_DEFAULT_PORT: u16 = 10809;
/// Longest export name a string may carry (doc/proto.md, "Conventions").
pub const EXPORT_NAME_BYTES_MAX: usize = 4096;

/// A socket to reach an NBD server at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix-domain socket path.
    Unix(PathBuf),
    /// A `host:port` pair, resolved when connecting.
    Tcp(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => f.write_str(a),
        }
    }
}

/// An endpoint plus the export name to ask for (empty: the default export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdAddress {
    pub endpoint: Endpoint,
    pub export: String,
}

impl NbdAddress {
    /// Parses `s`; `name`, when given, overrides any export name in a URI.
    pub fn parse(s: &str, name: Option<&str>) -> Result<NbdAddress, AttachError> {
        let bad = |reason: &str| AttachError::BadAddress {
            addr: s.to_string(),
            reason: reason.to_string(),
        };
        let (endpoint, export) = if let Some(rest) = s.strip_prefix("nbd+unix://") {
            // RFC-style URI (NBD `doc/uri.md`): empty authority, path is the
            // export name, the socket comes in the `socket=` query parameter.
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !path.is_empty() && !path.starts_with('/') {
                return Err(bad(
                    "nbd+unix:// takes no host (write nbd+unix:///NAME?socket=PATH)",
                ));
            }
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .filter(|p| !p.is_empty())
                .ok_or_else(|| bad("nbd+unix:// needs ?socket=PATH"))?;
            let export = path.strip_prefix('/').unwrap_or(path);
            (Endpoint::Unix(PathBuf::from(socket)), export.to_string())
        } else if let Some(rest) = s.strip_prefix("nbd://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            if authority.is_empty() {
                return Err(bad("nbd:// needs a host"));
            }
            (Endpoint::Tcp(with_port(authority)), path.to_string())
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("unix: needs a socket path"));
            }
            (Endpoint::Unix(PathBuf::from(path)), String::new())
        } else if s.starts_with('/') {
            (Endpoint::Unix(PathBuf::from(s)), String::new())
        } else if s.contains("://") {
            return Err(bad(
                "unknown scheme (use nbd://, nbd+unix://, unix:PATH or HOST:PORT)",
            ));
        } else if has_port(s) {
            (Endpoint::Tcp(s.to_string()), String::new())
        } else {
            return Err(bad("expected unix:PATH, HOST:PORT, nbd://HOST[:PORT]/NAME or nbd+unix:///NAME?socket=PATH"));
        };
        let export = name.map(str::to_string).unwrap_or(export);
        if export.len() > EXPORT_NAME_BYTES_MAX || export.contains('\0') {
            return Err(bad("export name longer than 4096 bytes or containing NUL"));
        }
        Ok(NbdAddress { endpoint, export })
    }
}

/// True when `s` ends in `:PORT` outside brackets (`host:1`, `[::1]:1`).
fn has_port(s: &str) -> bool {
    let tail = match s.rfind(']') {
        Some(i) => &s[i + 1..],
        None => s,
    };
    match tail.rsplit_once(':') {
        Some((host, port)) => {
            (!host.is_empty() || s.starts_with('[')) && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

fn with_port(authority: &str) -> String {
    if has_port(authority) {
        authority.to_string()
    } else {
        format!("{authority}:{NBD_DEFAULT_PORT}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> NbdAddress {
        NbdAddress::parse(s, None).expect("valid address")
    }

    #[test]
    fn every_documented_form_parses() {
        assert_eq!(
            parse("unix:/run/x.sock").endpoint,
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            parse("/run/x.sock").endpoint,
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            parse("10.0.0.1:10809").endpoint,
            Endpoint::Tcp("10.0.0.1:10809".into())
        );
        assert_eq!(
            parse("[::1]:7000").endpoint,
            Endpoint::Tcp("[::1]:7000".into())
        );
        let a = parse("nbd://db1/vol");
        assert_eq!(a.endpoint, Endpoint::Tcp("db1:10809".into()));
        assert_eq!(a.export, "vol");
        assert_eq!(
            parse("nbd://[::1]/v").endpoint,
            Endpoint::Tcp("[::1]:10809".into())
        );
        assert_eq!(
            parse("nbd://[::1]:7/v").endpoint,
            Endpoint::Tcp("[::1]:7".into())
        );
        assert_eq!(parse("nbd://h:7").export, "");
        let a = parse("nbd+unix:///vol?socket=/tmp/s");
        assert_eq!(a.endpoint, Endpoint::Unix("/tmp/s".into()));
        assert_eq!(a.export, "vol");
    }

    #[test]
    fn name_option_overrides_uri_export() {
        let a = NbdAddress::parse("nbd://h:1/a", Some("b")).expect("valid");
        assert_eq!(a.export, "b");
    }

    #[test]
    fn malformed_addresses_are_refused_with_the_reason() {
        for s in [
            "",
            "unix:",
            "nbd://",
            "nbd+unix:///x",
            "http://x",
            "hostonly",
            "h:99999",
        ] {
            let e = NbdAddress::parse(s, None).expect_err(s);
            assert!(e.to_string().contains("bad NBD address"), "{s}: {e}");
        }
        let long = "x".repeat(EXPORT_NAME_BYTES_MAX + 1);
        assert!(NbdAddress::parse("unix:/s", Some(&long)).is_err());
    }
}
