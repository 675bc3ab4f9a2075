//! The replication wire and the copy host's refusals: the pure codec
//! under proptest, then a raw client speaking to a real receiver.

#[path = "../common/mod.rs"]
mod common;

mod codec;
mod refusals;
