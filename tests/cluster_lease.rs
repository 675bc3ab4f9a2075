//! One writer per volume with real processes in network namespaces: a
//! production host cut off from the majority, alone or together with the
//! group's leader, acknowledges its last write before the host the majority
//! chose acknowledges its first, and what it acknowledged is on the copy.
//!
//! Five voters: a1 and a2 at the production site, b1 at the copy site,
//! witnesses w1 and w2. a2 opens a1's disk file through a loop device: one
//! disk (a LUN) reached by two hosts, which no lock taken on one host can
//! guard, so only the group's lease keeps a1 and a2 from writing at the
//! same time. A writer on each production export writes 4 KiB every 5 ms
//! and logs the client's monotonic clock at every answer; namespaces share
//! that clock.

mod cluster_support;
mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster_support::{host_of, Cluster, Netns, Spec};

/// One write every few ms until the stop file appears: `send SEQ SLOT T`
/// before, `ack SEQ SLOT T` or `err SEQ SLOT T ERRNO` after, T from
/// CLOCK_MONOTONIC. Each page holds its writer's tag, sequence number and
/// slot, repeated, so the disks can be checked against the log. It keeps
/// connecting until the export exists and again after it goes away.
const WRITER: &str = r#"
import os, struct, sys, time
import nbd
uri, base, slots, tag, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
PAGE = 4096
def out(*a):
    print(*a, flush=True)
seq, h = 0, None
while not os.path.exists(stop):
    if h is None:
        try:
            h = nbd.NBD()
            h.connect_uri(uri)
        except nbd.Error:
            h = None
            time.sleep(0.02)
            continue
    slot = seq % slots
    head = struct.pack('<8sQQ', tag.encode().ljust(8, b'\0'), seq, slot)
    data = (head * (PAGE // len(head) + 1))[:PAGE]
    out('send', seq, slot, '%.6f' % time.monotonic())
    try:
        h.pwrite(data, base + slot * PAGE)
        out('ack', seq, slot, '%.6f' % time.monotonic())
    except nbd.Error as e:
        out('err', seq, slot, '%.6f' % time.monotonic(), e.errno)
        if h.aio_is_dead() or h.aio_is_closed():
            h = None
    seq += 1
    time.sleep(0.005)
"#;

const PAGE: u64 = 4096;
/// Pages each writer cycles over; a1's at offset 0, a2's after them.
const SLOTS: u64 = 256;

/// The client's CLOCK_MONOTONIC in seconds, the clock the writers log.
fn monotonic_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One answered (or pending) write from a writer's log.
#[derive(Debug, Clone, PartialEq)]
enum Line {
    Send { seq: u64, t: f64 },
    Ack { seq: u64, slot: u64, t: f64 },
    Err { t: f64, errno: String },
}

/// A writer process on one export.
struct Writer {
    child: Child,
    log: PathBuf,
    stop: PathBuf,
}

impl Writer {
    fn start(dir: &Path, name: &str, uri: &str, base: u64) -> Writer {
        let script = dir.join("writer.py");
        std::fs::write(&script, WRITER).expect("write the writer script");
        let log = dir.join(format!("{name}.writes"));
        let stop = dir.join(format!("{name}.stop"));
        let child = common::debian_cmd("python3")
            .arg(&script)
            .args([uri, &base.to_string(), &SLOTS.to_string(), name])
            .arg(&stop)
            .stdout(std::fs::File::create(&log).expect("create the writer log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        Writer { child, log, stop }
    }

    fn lines(&self) -> Vec<Line> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // A last line without its newline is still being written.
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let num = |i: usize| f[i].parse::<u64>().expect("a number");
                let t = |i: usize| f[i].parse::<f64>().expect("a time");
                match f[0] {
                    "send" => Line::Send {
                        seq: num(1),
                        t: t(3),
                    },
                    "ack" => Line::Ack {
                        seq: num(1),
                        slot: num(2),
                        t: t(3),
                    },
                    "err" => Line::Err {
                        t: t(3),
                        errno: f[4].to_string(),
                    },
                    other => panic!("writer line {other:?}"),
                }
            })
            .collect()
    }

    /// Asks the writer to stop after its current write and waits for it.
    fn stop(mut self) -> Vec<Line> {
        std::fs::write(&self.stop, b"").expect("create the stop file");
        let deadline = Instant::now() + cluster_support::SETTLE;
        while self.child.try_wait().expect("poll the writer").is_none() {
            assert!(Instant::now() < deadline, "the writer did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.lines()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Acknowledgement times of a writer's log.
fn acks(lines: &[Line]) -> Vec<f64> {
    lines
        .iter()
        .filter_map(|l| match l {
            Line::Ack { t, .. } => Some(*t),
            _ => None,
        })
        .collect()
}

/// Whether the writer's latest write was answered with an error, so that
/// nothing it sent is still waiting for an answer.
fn refused_and_idle(lines: &[Line]) -> bool {
    matches!(lines.last(), Some(Line::Err { .. }))
}

/// The last sequence number acknowledged at each slot.
fn last_acked(lines: &[Line]) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        if let Line::Ack { seq, slot, .. } = l {
            m.insert(*slot, *seq);
        }
    }
    m
}

/// Every acknowledged write of `tag` is on `disk` (at `base`): each slot
/// holds the last write acknowledged there or a later one that was sent
/// (a write answered with an error may or may not have landed).
fn assert_acknowledged_on(disk: &Path, base: u64, tag: &str, lines: &[Line]) {
    let sent = lines
        .iter()
        .filter_map(|l| match l {
            Line::Send { seq, .. } => Some(*seq),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut f = std::fs::File::open(disk).expect("open disk");
    let mut page = vec![0u8; PAGE as usize];
    let acked = last_acked(lines);
    for (slot, seq) in &acked {
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(base + slot * PAGE)).expect("seek");
        f.read_exact(&mut page).expect("read page");
        let head = &page[..24];
        assert!(
            page.chunks(24).all(|c| c == &head[..c.len()]),
            "{}: slot {slot} is not one whole write",
            disk.display()
        );
        let on_disk_tag = String::from_utf8_lossy(&head[..8]);
        let on_disk_seq = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        assert_eq!(
            on_disk_tag.trim_end_matches('\0'),
            tag,
            "{}: slot {slot} lost acknowledged write {seq}",
            disk.display()
        );
        assert!(
            on_disk_seq >= *seq && on_disk_seq <= sent && on_disk_seq % SLOTS == *slot,
            "{}: slot {slot} holds write {on_disk_seq}, but write {seq} was acknowledged there",
            disk.display()
        );
    }
    assert!(!acked.is_empty(), "{tag} acknowledged nothing");
}

/// A loop device over a file, detached when dropped.
struct Lun(String);

impl Lun {
    fn attach(file: &Path) -> Lun {
        let out = common::run_ok(Command::new("losetup").args(["--find", "--show"]).arg(file));
        Lun(out.trim().to_string())
    }
}

impl Drop for Lun {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The whole volume as `member` serves it, copied into a file.
fn volume_image(c: &Cluster, member: &str) -> PathBuf {
    let out = c.dir.path().join(format!("{member}.volume"));
    common::run_ok(
        common::debian_cmd("nbdcopy")
            .arg(c.nbd_uri(member))
            .arg(&out),
    );
    out
}

/// The five-voter group of this file in replication `mode`, each member in
/// its own namespace, `order` being the recovery domain's (backup) order,
/// with `timing` as its lease and failure timeout; a2 reaches a1's disk
/// through a loop device.
/// Returns the namespaces, the loop device and the started, synced group
/// (in that order, so that a test drops them the other way round).
fn five_voters(mode: &str, order: [&str; 5], timing: Option<(u64, u64)>) -> (Netns, Lun, Cluster) {
    let net = Netns::up(5);
    let site = |m: &str| match m {
        "a1" | "a2" => Some(0),
        "b1" => Some(1),
        _ => None,
    };
    let members: Vec<(&str, Option<usize>)> = order.iter().map(|m| (*m, site(m))).collect();
    let mut spec = Spec::new(mode, 2, "32M", &members);
    spec.timing = timing;
    for (i, m) in spec.members.iter_mut().enumerate() {
        m.address = Netns::address(i + 1, 7401);
    }
    let mut c = Cluster::new(spec);
    let lun = Lun::attach(&c.disk(0));
    for m in &mut c.spec.members {
        if m.name == "a2" {
            m.disk_file = Some(lun.0.clone());
        }
    }
    std::fs::write(&c.config, c.domain_text()).expect("rewrite the recovery domain");
    for (i, m) in order.iter().enumerate() {
        c.wrap.insert((*m).to_string(), net.exec_prefix(i + 1));
    }
    // a2 starts once a1 hosts the production disk: the first of a site's
    // members to join hosts its disk, and the tests cut a1 off.
    let first: Vec<&str> = order.iter().copied().filter(|m| *m != "a2").collect();
    c.start_all(&first);
    c.wait_synced("a1");
    c.start("a2");
    c.wait_all_joined(&order);
    (net, lun, c)
}

/// Figures of one run, printed for the record.
struct Outcome {
    a1: Vec<Line>,
    a2: Vec<Line>,
    t_cut: f64,
}

/// Writers on a1 and a2 while `cut` separates a1 from the majority; waits
/// until a2 acknowledges writes and a1 refuses them (or the patience runs
/// out: the assertions then say which did not happen).
fn run_writers(c: &Cluster, cut: impl FnOnce()) -> Outcome {
    let w1 = Writer::start(c.dir.path(), "a1", &c.nbd_uri("a1"), 0);
    let w2 = Writer::start(c.dir.path(), "a2", &c.nbd_uri("a2"), SLOTS * PAGE);
    common::wait_until("a1 acknowledges writes", cluster_support::SETTLE, || {
        acks(&w1.lines()).len() >= 50
    });
    let t_cut = monotonic_s();
    cut();
    let deadline = Instant::now() + cluster_support::SETTLE;
    while Instant::now() < deadline {
        let a2_serves = acks(&w2.lines()).len() >= 20;
        let l1 = w1.lines();
        let a1_refuses =
            refused_and_idle(&l1) && acks(&l1).last().is_some_and(|t| *t < monotonic_s() - 1.0);
        if a2_serves && a1_refuses {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let a1 = w1.stop();
    let a2 = w2.stop();
    Outcome { a1, a2, t_cut }
}

impl Outcome {
    /// Asserts one writer at a time and reports the figures.
    fn assert_one_writer(&self, c: &Cluster) {
        let a1_acks = acks(&self.a1);
        let a2_acks = acks(&self.a2);
        let last_a1 = a1_acks.last().copied().expect("a1 acknowledged writes");
        let first_a2 = a2_acks.first().copied();
        let after_cut = a1_acks.iter().filter(|t| **t > self.t_cut).count();
        let errors: Vec<&String> = self
            .a1
            .iter()
            .filter_map(|l| match l {
                Line::Err { errno, .. } => Some(errno),
                _ => None,
            })
            .collect();
        eprintln!(
            "cut -> a1's last ack {:.3} s ({after_cut} acks after the cut), \
             cut -> a2's first ack {}; a1's refusals: {} ({:?})",
            last_a1 - self.t_cut,
            first_a2.map_or("none".into(), |t| format!("{:.3} s", t - self.t_cut)),
            errors.len(),
            errors.first(),
        );
        let first_a2 =
            first_a2.unwrap_or_else(|| panic!("a2 never acknowledged a write\n{}", c.all_logs(40)));
        assert!(
            last_a1 < first_a2,
            "two writers: a1 acknowledged a write {:.3} s after a2's first \
             (cut at 0: a1's last {:.3} s, a2's first {:.3} s)",
            last_a1 - first_a2,
            last_a1 - self.t_cut,
            first_a2 - self.t_cut
        );
        assert!(
            refused_and_idle(&self.a1),
            "a1 still acknowledges writes at the end of the run"
        );
        assert!(
            errors.iter().all(|e| e.as_str() == "EIO"),
            "a1 refuses writes with EIO: {errors:?}"
        );
    }
}

/// What was acknowledged reads back: a1's writes and a2's from the volume
/// a2 now serves (the disk they share), and from the copy once a2 has
/// brought it up to date.
/// Then the group stops, a1 first and at once, as a host whose lease ran
/// out is shut down: it must not touch the shared disk again.
fn assert_acknowledged_writes_kept(c: &mut Cluster, out: &Outcome) {
    let volume = volume_image(c, "a2");
    assert_acknowledged_on(&volume, 0, "a1", &out.a1);
    assert_acknowledged_on(&volume, SLOTS * PAGE, "a2", &out.a2);
    c.wait_synced("a2");
    c.kill("a1");
    c.stop_all();
    assert_acknowledged_on(&c.disk(1), 0, "a1", &out.a1);
    assert_acknowledged_on(&c.disk(1), SLOTS * PAGE, "a2", &out.a2);
}

#[test]
fn a_production_host_cut_off_alone_acknowledges_nothing_once_another_host_serves() {
    if !common::require(&["ip", "losetup", "nbdsh", "nbdcopy"]) || !common::require_root() {
        return;
    }
    // The default lease and failure timeout: the run measures them. In
    // sync mode a1 cannot acknowledge once its copy is cut off too; the
    // write it has in flight then fails when the copy's deadline comes,
    // long after its lease.
    let (net, _lun, mut c) = five_voters("sync", ["a1", "a2", "b1", "w1", "w2"], None);
    let out = run_writers(&c, || net.cut(1));
    let s = c.wait_status("w1", "a2 hosts production", |s| {
        host_of(s, "payroll-prod") == Some("a2")
    });
    assert_eq!(host_of(&s, "payroll-dr"), Some("b1"), "{}", s.to_text());
    out.assert_one_writer(&c);
    assert_acknowledged_writes_kept(&mut c, &out);
}

#[test]
fn a_production_host_cut_off_with_the_leader_stops_within_its_lease() {
    if !common::require(&["ip", "losetup", "nbdsh", "nbdcopy"]) || !common::require_root() {
        return;
    }
    // w1 is first in the domain: it founds the group and leads it. Async
    // mode: a1 acknowledges writes from its own disk for as long as its
    // lease lets it.
    let order = ["w1", "a1", "a2", "b1", "w2"];
    let timing = (cluster_support::LEASE_MS, cluster_support::FAIL_TIMEOUT_MS);
    let (net, _lun, mut c) = five_voters("async", order, Some(timing));
    let s = c.status("a1").expect("a1 answers");
    assert_eq!(s.leader.as_deref(), Some("w1"), "{}", s.to_text());
    assert_eq!(host_of(&s, "payroll-prod"), Some("a1"), "{}", s.to_text());
    // {w1, a1} (namespaces 1 and 2) on a bridge of their own.
    let out = run_writers(&c, || net.split(&[1, 2]));
    c.wait_status("a2", "a2 hosts production", |s| {
        host_of(s, "payroll-prod") == Some("a2")
    });
    out.assert_one_writer(&c);
    let last_a1 = acks(&out.a1)
        .last()
        .copied()
        .expect("a1 acknowledged writes");
    // Its last lease was asked for before the cut: it ran out within a
    // lease of it (and the margin, for the client's own wake-up).
    let within_s = (timing.0 + geomirror::config::LEASE_MARGIN_MS) as f64 / 1000.0;
    assert!(
        last_a1 - out.t_cut < within_s,
        "a1 acknowledged a write {:.3} s after the cut, past its lease",
        last_a1 - out.t_cut
    );
    // The cut-off pair knows it has no majority.
    for m in ["a1", "w1"] {
        let s = c.wait_status(m, "no quorum", |s| !s.quorum);
        if m == "a1" {
            assert_eq!(s.resources[0].state, "Fenced", "{}", s.to_text());
        }
    }
    assert_acknowledged_writes_kept(&mut c, &out);
}
