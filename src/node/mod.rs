//! The member daemon: runs the group engine and turns its actions into
//! running hosts, receivers, senders and NBD exports.

pub mod control;
pub mod status;
