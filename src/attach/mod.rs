//! Attaching a served volume to this machine: as a kernel NBD device (generic
//! netlink, ioctl fallback) or, without the nbd module, as a FUSE file.
//!
//! ```text
//!  address ─▶ client (handshake) ─┬─▶ kernel: netlink NBD_CMD_CONNECT ─▶ /dev/nbdN
//!                                 │          (ioctl NBD_SET_SOCK + NBD_DO_IT)
//!                                 └─▶ pipeline (requests in flight) ─▶ fuse ─▶ DIR/NAME ─▶ loop
//! ```
//!
//! The address is given directly (`--nbd`); resolving it from a group's
//! recovery domain goes through [`address::NbdAddress`] as well, so the
//! commands only need one more way to build it.

pub mod address;
pub mod client;
pub mod error;
pub mod fuse;
pub mod genl;
pub mod ioctl;
pub mod kernel;
pub mod loopdev;
pub mod netlink;
pub mod pipeline;
pub mod process;
pub mod stream;
pub mod sys;

pub use address::{Endpoint, NbdAddress};
pub use client::ExportInfo;
pub use error::AttachError;
pub use pipeline::NbdClient;
