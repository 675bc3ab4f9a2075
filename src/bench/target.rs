//! What is measured: a labelled NBD export, reached through our NBD client
//! with a bounded connect, and refused early when it cannot take writes.

use super::error::BenchError;
use crate::attach::{Endpoint, NbdAddress, NbdClient};
use std::sync::mpsc;
use std::time::Duration;

/// How long connecting plus the NBD handshake may take by default.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// One export to measure.
#[derive(Clone, Debug)]
pub struct Target {
    /// Name in reports (`--label`, the member name, or `unmirrored`).
    pub label: String,
    pub addr: NbdAddress,
}

impl Target {
    /// The export as a libnbd URI (NBD `doc/uri.md`), the form fio's `nbd`
    /// engine takes.
    pub fn uri(&self) -> String {
        let export = percent_encode(&self.addr.export);
        match &self.addr.endpoint {
            Endpoint::Unix(p) => format!(
                "nbd+unix:///{export}?socket={}",
                percent_encode(&p.to_string_lossy())
            ),
            Endpoint::Tcp(hp) => format!("nbd://{hp}/{export}"),
        }
    }

    /// Connects and negotiates within `timeout_ms`, and checks that the
    /// export takes writes. A stuck server costs one parked thread, never
    /// a hung benchmark.
    pub fn connect(&self, timeout_ms: u64) -> Result<NbdClient, BenchError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let addr = self.addr.clone();
        std::thread::Builder::new()
            .name("bench-connect".into())
            .spawn(move || {
                let _ = tx.send(NbdClient::connect(&addr));
            })
            .map_err(|e| BenchError::Local(format!("spawn connect thread: {e}")))?;
        let client = match rx.recv_timeout(Duration::from_millis(timeout_ms)) {
            Ok(Ok(c)) => c,
            Ok(Err(cause)) => {
                return Err(BenchError::Unreachable {
                    target: self.describe(),
                    cause,
                })
            }
            Err(_) => {
                return Err(BenchError::ConnectTimeout {
                    target: self.describe(),
                    timeout_ms,
                })
            }
        };
        if client.info().read_only() {
            return Err(BenchError::ReadOnly {
                target: self.describe(),
            });
        }
        Ok(client)
    }

    /// `label (uri)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.label, self.uri())
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `/`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Targets from `--uri` (and the `--label` given in the same position).
pub fn from_uris(uris: &[String], labels: &[String]) -> Result<Vec<Target>, BenchError> {
    if labels.len() > uris.len() {
        return Err(BenchError::Usage(format!(
            "{} --label given for {} --uri",
            labels.len(),
            uris.len()
        )));
    }
    uris.iter()
        .enumerate()
        .map(|(i, u)| {
            let addr = NbdAddress::parse(u, None)
                .map_err(|e| BenchError::Usage(format!("--uri {u}: {e}")))?;
            let label = labels.get(i).cloned().unwrap_or_else(|| u.clone());
            Ok(Target { label, addr })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn unix_target_becomes_nbd_unix_uri() {
        let t = Target {
            label: "a".into(),
            addr: NbdAddress {
                endpoint: Endpoint::Unix(PathBuf::from("/tmp/x y.sock")),
                export: "vol".into(),
            },
        };
        assert_eq!(t.uri(), "nbd+unix:///vol?socket=/tmp/x%20y.sock");
    }

    #[test]
    fn tcp_target_becomes_nbd_uri() {
        let t = from_uris(&["127.0.0.1:10809".into()], &[]).expect("valid address");
        assert_eq!(t[0].uri(), "nbd://127.0.0.1:10809/");
        assert_eq!(t[0].label, "127.0.0.1:10809");
    }

    #[test]
    fn more_labels_than_uris_is_refused() {
        let e = from_uris(&["unix:/a".into()], &["x".into(), "y".into()]);
        assert!(matches!(e, Err(BenchError::Usage(_))));
    }
}
