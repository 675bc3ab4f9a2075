//! Generation identifiers (DRBD's data generation UUIDs) and the pure rule
//! that decides, on connect, between full sync, partial sync, nothing to
//! do, or refusal (split brain: reported, never merged).
/// The generation identifiers of one disk, read from its label: the
/// storage layer's type, so labels and the wire carry the same value.
pub use crate::storage::Generations;

/// What a link does once connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncPlan {
    /// The copy is fresh or too old for the bitmap: copy every chunk.
    Full,
    /// Send the chunks the dirty log holds.
    Partial,
    /// Same data and nothing dirty.
    Nothing,
    /// Both sides wrote while apart: refused, reported, never merged.
    SplitBrain,
    /// The copy holds data newer than production, or unrelated data.
    Refuse(String),
}

/// Decide the sync, DRBD style, from production's and the copy's
/// generations and whether production's dirty log is empty.
pub fn decide(production: &Generations, copy: &Generations, log_empty: bool) -> SyncPlan {
    let p = production;
    let c = copy;
    if c.current == 0 {
        return SyncPlan::Full;
    }
    if c.current == p.current {
        // The copy may have written on its own too: then its bitmap
        // generation is set and points at the common ancestor.
        if c.bitmap != 0 && p.bitmap != 0 && c.bitmap == p.bitmap {
            return SyncPlan::SplitBrain;
        }
        return if log_empty {
            SyncPlan::Nothing
        } else {
            SyncPlan::Partial
        };
    }
    let p_ancestors = [p.bitmap, p.history[0], p.history[1]];
    let c_ancestors = [c.bitmap, c.history[0], c.history[1]];
    // The copy started a new generation from one production also moved
    // away from: both changed the data since they parted.
    if c.bitmap != 0 && p_ancestors.contains(&c.bitmap) && p.current != c.bitmap {
        return SyncPlan::SplitBrain;
    }
    if c.current == p.bitmap {
        return SyncPlan::Partial;
    }
    // The copy moved on from production's current generation while
    // production holds writes this copy lacks: both wrote since they parted.
    if c.bitmap != 0 && c.bitmap == p.current && !log_empty {
        return SyncPlan::SplitBrain;
    }
    if p.current != 0 && c_ancestors.contains(&p.current) {
        return SyncPlan::Refuse(format!(
            "copy {c} holds newer data than production {p}: sync in the other direction"
        ));
    }
    if p.history.contains(&c.current) {
        return SyncPlan::Full;
    }
    SyncPlan::Refuse(format!("copy {c} and production {p} share no generation"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(current: u64, bitmap: u64, h0: u64) -> Generations {
        Generations {
            current,
            bitmap,
            history: [h0, 0],
        }
    }

    #[test]
    fn fresh_copy_gets_a_full_sync() {
        assert_eq!(
            decide(&g(5, 0, 0), &Generations::default(), true),
            SyncPlan::Full
        );
    }

    #[test]
    fn same_generation_syncs_the_bitmap_or_nothing() {
        assert_eq!(decide(&g(5, 0, 0), &g(5, 0, 0), true), SyncPlan::Nothing);
        assert_eq!(decide(&g(5, 0, 0), &g(5, 0, 0), false), SyncPlan::Partial);
    }

    #[test]
    fn copy_at_bitmap_generation_gets_a_partial_sync() {
        assert_eq!(decide(&g(6, 5, 4), &g(5, 0, 4), false), SyncPlan::Partial);
    }

    #[test]
    fn copy_older_than_the_bitmap_gets_a_full_sync() {
        assert_eq!(decide(&g(6, 5, 4), &g(4, 0, 3), false), SyncPlan::Full);
    }

    #[test]
    fn both_sides_wrote_is_split_brain() {
        assert_eq!(
            decide(&g(6, 5, 4), &g(7, 5, 4), false),
            SyncPlan::SplitBrain
        );
    }

    #[test]
    fn copy_written_apart_while_a_running_production_wrote_is_split_brain() {
        assert_eq!(
            decide(&g(5, 0, 4), &g(6, 5, 4), false),
            SyncPlan::SplitBrain
        );
    }

    #[test]
    fn copy_ahead_of_production_is_refused() {
        assert!(matches!(
            decide(&g(5, 0, 4), &g(6, 5, 4), true),
            SyncPlan::Refuse(_)
        ));
    }

    #[test]
    fn unrelated_generations_are_refused() {
        assert!(matches!(
            decide(&g(5, 0, 0), &g(9, 0, 8), true),
            SyncPlan::Refuse(_)
        ));
    }
}
