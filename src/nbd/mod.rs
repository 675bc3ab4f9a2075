//! The NBD frontend: a pure codec, the fixed-newstyle handshake, the transmission
//! phase and a server with connection limits and graceful shutdown (NBD `doc/proto.md`).
//!
//! The server serves any [`BlockDevice`] handed to it as an [`Export`]; it never
//! opens files itself.

pub mod consts;
mod error;
pub mod handshake;
pub mod option;
pub mod proto;
pub mod replay;
mod reply;
pub mod server;
pub mod transmission;

#[cfg(test)]
mod proto_tests;
#[cfg(test)]
mod transmission_tests;

pub use error::NbdError;
pub use server::{ListenAddr, Server, ServerConfig};
pub use transmission::{serve_connection, ConnectionOptions};

use std::sync::Arc;

use crate::storage::BlockDevice;
use consts::*;

/// One exported device, as clients see it by name.
pub struct Export {
    /// Export name (≤ 4096 bytes); the empty name selects the first export.
    pub name: String,
    /// Free text shown by clients (`nbdinfo`), may be empty.
    pub description: String,
    /// The device every request goes to.
    pub device: Arc<dyn BlockDevice>,
    /// Refuse writes, trims and zeroes with EPERM.
    pub read_only: bool,
    /// Connections in the transmission phase with this export now (read by
    /// the member daemon for `geomirror_nbd_connections`).
    pub connections: Arc<std::sync::atomic::AtomicU64>,
}

impl Export {
    pub fn new(name: impl Into<String>, device: Arc<dyn BlockDevice>) -> Export {
        Export {
            name: name.into(),
            description: String::new(),
            device,
            read_only: false,
            connections: Arc::default(),
        }
    }

    /// Transmission flags (doc/proto.md "Transmission flags"). MULTI_CONN is
    /// sound because FLUSH syncs the shared device, covering writes completed
    /// on every connection; DF only makes sense with structured replies.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_CAN_MULTI_CONN;
        if self.read_only {
            f |= TF_READ_ONLY;
        } else {
            f |= TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
        }
        if structured {
            f |= TF_SEND_DF;
        }
        f
    }
}
