//! geomirror: a userspace block-device mirroring driver for Linux.
//!
//! One volume is served over NBD from the **production host**; every write
//! is applied to the production disk and replicated, page by page, to the
//! **copy host** of every copy site. Which member hosts which disk, and when
//! mirroring starts, is decided by the join protocol of a primary-backup
//! group whose state is ordered by an embedded Raft (openraft).
//!
//! ```text
//!  NBD client (kernel, qemu, nbdfuse, fio)
//!        │ NBD protocol
//!        ▼
//!  nbd/ ──▶ replication/ ──▶ storage/ (production disk)
//!                 │ TCP, crc32 per page, epoch-fenced
//!                 ▼
//!           replication/ receiver ──▶ storage/ (copy disk, per copy site)
//!
//!  group/  join protocol + group state, ordered by Raft on every member
//!  node    the member daemon: turns group actions into running services
//! ```
//!
//! Data path: `nbd → replication → storage`. `group` is pure logic plus the
//! engine glue; `node` is where I/O meets the engines.

pub mod attach;
pub mod bench;
pub mod cmd;
pub mod config;
pub mod demo;
pub mod frame;
pub mod group;
pub mod ids;
pub mod nbd;
pub mod node;
pub mod obs;
pub mod replication;
pub mod storage;
pub mod units;
