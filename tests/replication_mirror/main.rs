//! The mirrored volume end to end on loopback TCP: production and copy
//! disks are real files behind the plain engine, receivers are real
//! listeners, and faults come from a relay task between the two.

#[path = "../common/mod.rs"]
mod common;

mod bursts;
mod disk_failure;
mod faults;
mod full_sync;
mod harness;
mod inline;
mod label;
mod lending;
mod outage;
mod power;
mod volatile;
