//! Empty: the allocator thresholds that kept resync buffers in the heap are
//! now set once at start-up, by `storage::heap::keep_buffers_in_heap`.
