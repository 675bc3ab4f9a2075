//! The primary-backup group: replicated state, the join protocol as pure
//! code, and the openraft engine that orders state changes on every member.

pub mod command;
pub mod domain;
pub mod engine;
pub mod error;
pub mod ids;
pub mod join;
pub mod state;
