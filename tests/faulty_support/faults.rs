//! The faults a test switches on in a faulty disk, and the counters that show
//! which requests reached the disk and which of them a fault failed.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A kind of request the disk serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// read(2), preadv(2), an io_uring read.
    Read,
    /// A write of data: write(2), pwritev(2), an io_uring write, and every
    /// fallocate(2) (punch, zero range, allocate). A write a fault fails
    /// leaves the file as it was.
    Write,
    /// fsync(2) and fdatasync(2), and the durability step of a write with
    /// O_DSYNC / RWF_DSYNC (FUA): what makes written data survive a crash.
    Sync,
}

impl Op {
    fn index(self) -> usize {
        match self {
            Op::Read => 0,
            Op::Write => 1,
            Op::Sync => 2,
        }
    }
}

/// When a request fails, and with which errno. Built from [`Fault::eio`]
/// and narrowed with the other methods; a request fails when it matches
/// every condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    errno: i32,
    range: Range<u64>,
    pid: Option<u32>,
    after: u64,
}

impl Fault {
    /// Every request fails with EIO, at every offset, from every process.
    pub fn eio() -> Fault {
        Fault {
            errno: libc::EIO,
            range: 0..u64::MAX,
            pid: None,
            after: 0,
        }
    }

    /// Fail with `errno` (e.g. `libc::ENOSPC`) instead of EIO.
    pub fn errno(mut self, errno: i32) -> Fault {
        self.errno = errno;
        self
    }

    /// Only requests that touch a byte at `offset` or beyond. The label and
    /// bitmap sit at the end of the file, past every data offset: a fault
    /// that must spare them is a [`Fault::range`] ending at the data size.
    pub fn starting_at(mut self, offset: u64) -> Fault {
        self.range = offset..u64::MAX;
        self
    }

    /// Only requests that touch a byte of `range` (of the disk file: the
    /// label and bitmap at its end are inside the file too). Sync requests
    /// carry no range and ignore this.
    pub fn range(mut self, range: Range<u64>) -> Fault {
        self.range = range;
        self
    }

    /// Only requests from process `pid`, any of its threads (io_uring's
    /// workers included): a path failure on one host while another host
    /// still reaches the same disk.
    pub fn only_pid(mut self, pid: u32) -> Fault {
        self.pid = Some(pid);
        self
    }

    /// Let the first `requests` matching requests through, then fail: the
    /// disk breaks in the middle of a run without the test timing it.
    pub fn after(mut self, requests: u64) -> Fault {
        self.after = requests;
        self
    }

    /// The errno a matching request fails with.
    pub fn errno_value(&self) -> i32 {
        self.errno
    }
}

/// How many requests of one kind the disk saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Requests that reached the disk (failed ones included).
    pub seen: u64,
    /// Requests a fault failed.
    pub failed: u64,
    /// Bytes read from or written to the backing file (0 for Sync). A FUA
    /// write whose sync then fails counts: its data was written.
    pub bytes: u64,
}

/// Counts of every kind of request since the disk was mounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub reads: OpCounts,
    pub writes: OpCounts,
    pub syncs: OpCounts,
    /// open(2)s of the file.
    pub opens: u64,
    /// Those of them with O_DIRECT (the engines' direct path).
    pub direct_opens: u64,
}

impl Counters {
    /// The counts of `op`.
    pub fn of(&self, op: Op) -> OpCounts {
        match op {
            Op::Read => self.reads,
            Op::Write => self.writes,
            Op::Sync => self.syncs,
        }
    }
}

/// A switched-on fault and how many matching requests it let through.
struct Rule {
    op: Op,
    fault: Fault,
    passed: u64,
}

#[derive(Default)]
struct Tally {
    seen: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

/// The faults in force and the counters, shared by the file system's
/// threads and the test.
#[derive(Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    tallies: [Tally; 3],
    opens: AtomicU64,
    direct_opens: AtomicU64,
}

impl Faults {
    /// Adds a fault for `op`; faults add up (a request fails when any matches).
    pub fn fail(&self, op: Op, fault: Fault) {
        self.lock().push(Rule {
            op,
            fault,
            passed: 0,
        });
    }

    /// Removes the faults of `op`.
    pub fn heal_op(&self, op: Op) {
        self.lock().retain(|r| r.op != op);
    }

    /// Removes every fault: the disk works again.
    pub fn heal(&self) {
        self.lock().clear();
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        let read = |op: Op| {
            let t = &self.tallies[op.index()];
            OpCounts {
                seen: t.seen.load(Ordering::SeqCst),
                failed: t.failed.load(Ordering::SeqCst),
                bytes: t.bytes.load(Ordering::SeqCst),
            }
        };
        Counters {
            reads: read(Op::Read),
            writes: read(Op::Write),
            syncs: read(Op::Sync),
            opens: self.opens.load(Ordering::SeqCst),
            direct_opens: self.direct_opens.load(Ordering::SeqCst),
        }
    }

    /// Counts an open of the file.
    pub fn opened(&self, direct: bool) {
        self.opens.fetch_add(1, Ordering::SeqCst);
        if direct {
            self.direct_opens.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Counts a request of `op` over `range` from thread `tid` and returns
    /// the errno it must fail with, if a fault matches it.
    pub fn check(&self, op: Op, range: Range<u64>, tid: u32) -> Option<i32> {
        self.tallies[op.index()].seen.fetch_add(1, Ordering::SeqCst);
        let mut rules = self.lock();
        // Resolved once per request, and only when a rule asks for it.
        let mut process: Option<u32> = None;
        for rule in rules.iter_mut().filter(|r| r.op == op) {
            let f = &rule.fault;
            if op != Op::Sync && !overlaps(&f.range, &range) {
                continue;
            }
            if let Some(pid) = f.pid {
                if *process.get_or_insert_with(|| thread_group(tid)) != pid {
                    continue;
                }
            }
            if rule.passed < f.after {
                rule.passed += 1;
                continue;
            }
            self.tallies[op.index()]
                .failed
                .fetch_add(1, Ordering::SeqCst);
            return Some(f.errno);
        }
        None
    }

    /// Adds `bytes` moved by a request of `op` that succeeded.
    pub fn done(&self, op: Op, bytes: u64) {
        self.tallies[op.index()]
            .bytes
            .fetch_add(bytes, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        // A panicking test thread leaves the rules as they were: still usable.
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether two ranges share a byte; an empty request (a zero-length write)
/// counts at its offset.
fn overlaps(fault: &Range<u64>, req: &Range<u64>) -> bool {
    let end = req.end.max(req.start.saturating_add(1));
    req.start < fault.end && fault.start < end
}

/// The process a thread belongs to. FUSE names the calling *thread* (the
/// kernel puts `task_pid`, not the thread group, in the request header), and
/// io_uring runs a request on a worker thread of the submitting process: both
/// are mapped to their process through `/proc/TID/status`. A thread that is
/// gone already is taken as its own process.
fn thread_group(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}
