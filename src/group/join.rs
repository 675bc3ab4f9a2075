//! group/join
