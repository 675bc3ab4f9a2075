//! Replication of page writes from the production host to every copy host:
//! the wire codec, authentication, copy links, the receiver, resync, verify.
//!
//! ```text
//! production host                                   copy host
//! MirroredVolume ─┬─ local BlockDevice
//!                 └─ CopyLink ── TCP (frames, crc32, epoch) ──▶ Receiver ─▶ copy BlockDevice
//!                      │ DirtyLog (durable bitmap)              ◀── Ack/Sums/Nack
//! ```

mod apply;
pub mod auth;
pub mod dirty;
pub mod error;
mod framed;
pub mod generation;
mod link;
mod mirror;
pub mod order;
mod primary;
pub mod receiver;
mod resync;
mod session;
mod stats;
pub mod verify;
pub mod wire;

pub use dirty::{ChunkSet, DirtyLog, MemDirtyLog};
pub use error::ReplicationError;
pub use generation::{decide, Generations, SyncPlan};
pub use link::{CopyConfig, CopyLink, CopyStats, LinkState};
pub use mirror::{MirroredVolume, VolumeConfig};
pub use primary::Mode;
pub use receiver::{Receiver, ReceiverConfig, ReceiverStats};
pub use verify::{verify, VerifyReport};
