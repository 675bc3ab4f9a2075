//! The NBD frontend: codec, handshake, transmission server.
