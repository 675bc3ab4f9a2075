//! group/state
