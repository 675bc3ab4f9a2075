//! Attaching a served volume to the kernel: NBD netlink (ioctl fallback), or FUSE.
