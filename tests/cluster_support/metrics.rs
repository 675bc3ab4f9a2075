//! A member's Prometheus page as the cluster tests read it: one plain
//! HTTP/1.0 scrape, and the values of a gauge or of every series of a name.

use std::time::Duration;

use super::Cluster;

impl Cluster {
    /// The answer to `GET /metrics` (HTTP/1.0: never chunked) from `member`'s endpoint (it must have one).
    pub fn scrape(&self, member: &str) -> String {
        use std::io::{Read, Write};
        let addr = self
            .spec
            .members
            .iter()
            .find(|m| m.name == member)
            .and_then(|m| m.metrics.clone())
            .unwrap_or_else(|| panic!("{member} has no metrics endpoint"));
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send the request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the answer");
        text
    }

    /// The value of the unlabelled gauge `name` on `member`'s metrics page.
    pub fn gauge(&self, member: &str, name: &str) -> Option<f64> {
        self.scrape(member).lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// The values of every series of `name` (any labels) on `member`'s page.
    pub fn series(&self, member: &str, name: &str) -> Vec<f64> {
        self.scrape(member)
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse().ok()))
            .collect()
    }
}
