//! The recovery-domain file (TOML), identical on every member, and its validation.
