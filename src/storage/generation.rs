//! Generation identifiers of a disk's data, and what two disks' identifiers
//! say about syncing them: nothing, the dirty chunks, everything, or split
//! brain (the scheme DRBD uses for its data generation UUIDs).
//!
//! `current` names the data generation on the disk; a new one is drawn when
//! a production host starts writing without some copy. `bitmap` is the
//! `current` at the moment the dirty bitmap started tracking for an absent
//! copy (0 when none). `history` keeps the latest older `current`s.

use serde::{Deserialize, Serialize};

/// Older generations remembered.
pub const HISTORY_LEN: usize = 2;

/// A disk's data generation identifiers (random u64, 0 = none).
/// `Default` is all zero: no data generation at all (a disk that must be
/// fully synced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generations {
    pub current: u64,
    pub bitmap: u64,
    pub history: [u64; HISTORY_LEN],
}

impl std::fmt::Display for Generations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:016x}:{:016x}:{:016x}:{:016x}",
            self.current, self.bitmap, self.history[0], self.history[1]
        )
    }
}

/// How to bring two disks into agreement, as seen from the local one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPlan {
    /// Same generation: nothing to send.
    InSync,
    /// Local is newer and tracked what changed since the peer's generation:
    /// send the dirty chunks.
    PartialToPeer,
    /// The peer is newer and tracked our generation: receive its dirty chunks.
    PartialFromPeer,
    /// Local is a later generation, without a bitmap for the peer's: send all.
    FullToPeer,
    /// The peer is a later generation: receive all.
    FullFromPeer,
    /// Both wrote after they last agreed: a person must choose.
    SplitBrain,
    /// No shared history (e.g. a fresh copy disk): a full sync from
    /// whichever is production.
    Unrelated,
}

fn nonzero(v: u64) -> u64 {
    v.max(1)
}

impl Generations {
    /// Identifiers of a freshly formatted disk.
    pub fn fresh() -> Generations {
        Generations {
            current: nonzero(rand::random()),
            bitmap: 0,
            history: [0; HISTORY_LEN],
        }
    }

    /// A new data generation starts (the production host writes while some
    /// copy is absent): the old `current` moves into the bitmap slot, so the
    /// dirty bitmap describes the changes since it.
    pub fn start_tracking(&mut self) {
        if self.bitmap == 0 {
            self.bitmap = self.current;
        } else {
            self.push_history(self.current);
        }
        self.current = nonzero(rand::random());
    }

    /// The disk is written again without the peers that hold its current
    /// generation (a production host restarting with dirty chunks, a copy
    /// disk served on its own): `current` becomes the bitmap generation,
    /// since the dirty bitmap records every change made after it, and a new
    /// `current` is drawn. An older bitmap generation goes to history: a
    /// peer still at it gets a full sync, as the bitmap may no longer cover
    /// everything since (DRBD's "new current UUID" on a disconnected write).
    pub fn new_current(&mut self) {
        if self.bitmap != 0 && self.bitmap != self.current {
            self.push_history(self.bitmap);
        }
        self.bitmap = self.current;
        self.current = nonzero(rand::random());
    }

    /// Resync finished and the bitmap is clean: forget the tracked
    /// generation (it goes to history).
    pub fn finish_tracking(&mut self) {
        if self.bitmap != 0 {
            self.push_history(self.bitmap);
            self.bitmap = 0;
        }
    }

    /// The disk received a full or partial sync from `source`: it now holds
    /// the source's generation.
    pub fn adopt(&mut self, source: &Generations) {
        if self.current != source.current {
            self.push_history(self.current);
        }
        self.current = source.current;
        self.bitmap = 0;
    }

    fn push_history(&mut self, g: u64) {
        if g == 0 || self.history.contains(&g) {
            return;
        }
        self.history.rotate_right(1);
        self.history[0] = g;
    }

    /// What syncing this disk with `peer` takes.
    pub fn plan(&self, peer: &Generations) -> SyncPlan {
        let ours = self;
        if ours.current == peer.current {
            return SyncPlan::InSync;
        }
        if ours.bitmap != 0 && ours.bitmap == peer.current {
            return SyncPlan::PartialToPeer;
        }
        if peer.bitmap != 0 && peer.bitmap == ours.current {
            return SyncPlan::PartialFromPeer;
        }
        if ours.bitmap != 0 && ours.bitmap == peer.bitmap {
            // Both moved on from the same tracked generation.
            return SyncPlan::SplitBrain;
        }
        let known = |g: &Generations, v: u64| v != 0 && (g.bitmap == v || g.history.contains(&v));
        if known(ours, peer.current) {
            return SyncPlan::FullToPeer;
        }
        if known(peer, ours.current) {
            return SyncPlan::FullFromPeer;
        }
        let shared = ours
            .history
            .iter()
            .chain([&ours.bitmap])
            .any(|&v| known(peer, v));
        if shared {
            SyncPlan::SplitBrain
        } else {
            SyncPlan::Unrelated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_that_agree_need_no_sync() {
        let a = Generations::fresh();
        assert_eq!(a.plan(&a), SyncPlan::InSync);
    }

    #[test]
    fn a_copy_left_behind_gets_the_dirty_chunks() {
        let copy = Generations::fresh();
        let mut prod = copy;
        prod.start_tracking();
        assert_eq!(prod.plan(&copy), SyncPlan::PartialToPeer);
        assert_eq!(copy.plan(&prod), SyncPlan::PartialFromPeer);
        let mut copy2 = copy;
        copy2.adopt(&prod);
        prod.finish_tracking();
        assert_eq!(prod.plan(&copy2), SyncPlan::InSync);
    }

    #[test]
    fn a_copy_older_than_the_bitmap_gets_everything() {
        let copy = Generations::fresh();
        let mut prod = copy;
        prod.start_tracking();
        prod.finish_tracking();
        prod.start_tracking();
        assert_eq!(prod.plan(&copy), SyncPlan::FullToPeer);
        assert_eq!(copy.plan(&prod), SyncPlan::FullFromPeer);
    }

    #[test]
    fn both_sides_writing_alone_is_split_brain() {
        let base = Generations::fresh();
        let (mut a, mut b) = (base, base);
        a.start_tracking();
        b.start_tracking();
        assert_eq!(a.plan(&b), SyncPlan::SplitBrain);
        assert_eq!(b.plan(&a), SyncPlan::SplitBrain);
    }

    #[test]
    fn a_new_current_tracks_from_the_last_one_and_forgets_older_bitmaps() {
        let copy = Generations::fresh();
        let mut prod = copy;
        prod.new_current();
        assert_eq!(prod.bitmap, copy.current);
        assert_eq!(prod.plan(&copy), SyncPlan::PartialToPeer);
        let mut again = prod;
        again.new_current();
        assert_eq!(again.bitmap, prod.current);
        assert_eq!(again.history[0], copy.current);
        assert_eq!(again.plan(&prod), SyncPlan::PartialToPeer);
        assert_eq!(again.plan(&copy), SyncPlan::FullToPeer);
    }

    #[test]
    fn a_copy_written_on_its_own_while_production_moved_on_is_split_brain() {
        let base = Generations::fresh();
        let (mut prod, mut copy) = (base, base);
        prod.new_current();
        copy.new_current();
        assert_eq!(prod.plan(&copy), SyncPlan::SplitBrain);
        assert_eq!(
            crate::replication::decide(&prod, &copy, false),
            crate::replication::SyncPlan::SplitBrain
        );
    }

    #[test]
    fn fresh_disks_are_unrelated() {
        assert_eq!(
            Generations::fresh().plan(&Generations::fresh()),
            SyncPlan::Unrelated
        );
    }
}
