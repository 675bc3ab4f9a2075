//! Overlap ordering: requests are admitted in one order; a request waits
//! for every earlier admitted request whose range overlaps its own, while
//! non-overlapping requests run in parallel. A barrier waits for all
//! earlier requests and blocks none after it.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

struct Entry {
    id: u64,
    start: u64,
    end: u64,
    /// Closed when the ticket is dropped; waiters see the acquire fail.
    done: Arc<Semaphore>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    live: Vec<Entry>,
}

/// The ordering gate. The number of live tickets is bounded by whoever
/// admits them (queue depths); lookups are linear in it.
#[derive(Default)]
pub struct OverlapGate {
    inner: Arc<Mutex<Inner>>,
}

/// Holding this keeps later overlapping requests waiting.
pub struct Ticket {
    id: u64,
    inner: Arc<Mutex<Inner>>,
    waits: Vec<Arc<Semaphore>>,
    done: Option<Arc<Semaphore>>,
}

fn overlaps(a0: u64, a1: u64, b0: u64, b1: u64) -> bool {
    a0 < b1 && b0 < a1
}

impl OverlapGate {
    pub fn new() -> OverlapGate {
        OverlapGate::default()
    }

    /// Admit `[offset, offset+len)` now (its place in the order is taken
    /// here, synchronously); await [`Ticket::ready`] before acting.
    pub fn admit(&self, offset: u64, len: u64) -> Ticket {
        let end = offset.saturating_add(len.max(1));
        let mut g = self.inner.lock().expect("gate lock poisoned");
        let waits = g
            .live
            .iter()
            .filter(|e| overlaps(e.start, e.end, offset, end))
            .map(|e| e.done.clone())
            .collect();
        let id = g.next_id;
        g.next_id += 1;
        let done = Arc::new(Semaphore::new(0));
        g.live.push(Entry {
            id,
            start: offset,
            end,
            done: done.clone(),
        });
        Ticket {
            id,
            inner: self.inner.clone(),
            waits,
            done: Some(done),
        }
    }

    /// Admit a barrier: it waits for every earlier request and holds
    /// nothing back.
    pub fn barrier(&self) -> Ticket {
        let g = self.inner.lock().expect("gate lock poisoned");
        let waits = g.live.iter().map(|e| e.done.clone()).collect();
        Ticket {
            id: u64::MAX,
            inner: self.inner.clone(),
            waits,
            done: None,
        }
    }

    /// Whether `t` waits for nothing and no other request is in flight:
    /// then it may run on the caller's thread without holding anyone up.
    pub fn is_alone(&self, t: &Ticket) -> bool {
        let g = self.inner.lock().expect("gate lock poisoned");
        t.waits.is_empty() && g.live.iter().all(|e| e.id == t.id)
    }

    /// Tickets alive (for tests and stats).
    pub fn live(&self) -> usize {
        self.inner.lock().expect("gate lock poisoned").live.len()
    }
}

impl Ticket {
    /// Whether every earlier request it overlaps is done: it may run now.
    pub fn is_ready(&self) -> bool {
        self.waits.iter().all(|w| w.is_closed())
    }

    /// Wait until every earlier overlapping request has dropped its ticket.
    pub async fn ready(&mut self) {
        for w in self.waits.drain(..) {
            // A closed semaphore is the "done" signal; no permit is ever added.
            let _ = w.acquire().await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let mut g = self.inner.lock().expect("gate lock poisoned");
            if let Some(i) = g.live.iter().position(|e| e.id == self.id) {
                g.live.swap_remove(i);
            }
            done.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn later_overlapping_request_waits_for_the_earlier_one() {
        let gate = OverlapGate::new();
        let first = gate.admit(0, 4096);
        let mut second = gate.admit(2048, 4096);
        let mut apart = gate.admit(8192, 4096);
        apart.ready().await;
        let waited = tokio::time::timeout(Duration::from_millis(50), second.ready()).await;
        assert!(
            waited.is_err(),
            "overlapping request ran before the earlier one finished"
        );
        drop(first);
        second.ready().await;
    }

    #[test]
    fn only_a_lone_ticket_is_alone() {
        let gate = OverlapGate::new();
        let first = gate.admit(0, 4096);
        assert!(gate.is_alone(&first));
        let apart = gate.admit(8192, 4096);
        assert!(!gate.is_alone(&first), "another request is in flight");
        assert!(!gate.is_alone(&apart));
        drop(first);
        assert!(gate.is_alone(&apart));
        drop(apart);
        assert!(gate.is_alone(&gate.barrier()));
        let _held = gate.admit(0, 1);
        assert!(!gate.is_alone(&gate.barrier()), "a barrier behind a write");
    }

    #[tokio::test]
    async fn barrier_waits_for_all_earlier_and_blocks_none_later() {
        let gate = OverlapGate::new();
        let first = gate.admit(0, 10);
        let mut bar = gate.barrier();
        let mut later = gate.admit(100, 10);
        later.ready().await;
        assert!(tokio::time::timeout(Duration::from_millis(50), bar.ready())
            .await
            .is_err());
        drop(first);
        bar.ready().await;
    }

    #[test]
    fn a_ticket_is_ready_once_every_earlier_overlapping_request_is_done() {
        let gate = OverlapGate::new();
        let first = gate.admit(0, 4096);
        let second = gate.admit(4095, 2);
        let apart = gate.admit(4097, 4096);
        let bar = gate.barrier();
        assert!(!second.is_ready(), "overlaps the first");
        assert!(apart.is_ready(), "overlaps nothing earlier");
        assert!(!bar.is_ready(), "a barrier waits for everything");
        drop(first);
        assert!(second.is_ready());
        assert!(!bar.is_ready());
        drop((second, apart));
        assert!(bar.is_ready());
    }
}
