//! Replication of page writes from the production host to every copy host.
