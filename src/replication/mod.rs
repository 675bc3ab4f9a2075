//! Replication of page writes from the production host to every copy host:
//! the wire codec, authentication, copy links, the receiver, resync, verify.
//!
//! ```text
//! production host                                   copy host
//! MirroredVolume ─┬─ local BlockDevice
//!                 └─ CopyLink ── TCP (frames, crc32, epoch) ──▶ Receiver ─▶ copy BlockDevice
//!                      │ DirtyLog (durable bitmap)              ◀── Ack/Sums/Nack
//! ```
//!
//! The rules, in the order a request meets them (DRBD protocol C is the
//! model):
//! - Order: the volume takes each write's place in one overlap order when
//!   it is submitted; overlapping writes are applied locally, queued to
//!   every link and applied on every copy in that order, others in
//!   parallel. FLUSH is a barrier behind every earlier request.
//! - Dirty marks: every write marks its chunks in each link's dirty log
//!   before it is sent or skipped (activity-log style); a chunk is cleared
//!   when the copy acknowledged everything in flight to it and no resync
//!   is owed. A disconnected copy never blocks a write.
//! - Resync: on connect the generations decide (full, partial, nothing,
//!   split brain); dirty chunks are sent under the same order as new
//!   writes, so a resync write never overwrites a newer one.
//! - Wire: every frame is crc-checked (prefix, header, page); a mismatch
//!   drops the connection, never writes, and the dirty log resends.
//!
//! For the node daemon: on the production host wrap the disk with
//! [`MirroredVolume::new`] and add one [`CopyLink`] per copy host with its
//! dirty bitmap; on a copy host run a [`Receiver`] with a writer for the
//! copy disk's label ([`ReceiverConfig::write_label`]). A link added
//! while writes flow must be given a log that already covers them (a fresh
//! copy is fully synced anyway).

mod apply;
pub mod auth;
pub mod dirty;
pub mod disk_failure;
pub mod error;
mod framed;
pub mod generation;
mod link;
mod mark_hint;
mod mirror;
mod op;
pub mod order;
mod primary;
pub mod receiver;
mod resync;
mod sender;
mod session;
mod stats;
pub mod verify;
pub mod wire;

pub use dirty::{ChunkSet, DirtyLog, MemDirtyLog};
pub use disk_failure::{errno_name, DiskFailure};
pub use error::ReplicationError;
pub use generation::{decide, Generations, SyncPlan};
pub use link::{CopyConfig, CopyLink, CopyStats, LinkState};
pub use mirror::{MirroredVolume, VolumeConfig};
pub use primary::Mode;
pub use receiver::{CopyLabel, LabelWriter, Receiver, ReceiverConfig, ReceiverStats};
pub use verify::{verify, VerifyReport};
