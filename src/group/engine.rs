//! group/engine
