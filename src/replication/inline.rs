//! Running a lone disk write or flush on the calling task's thread
//! ([`BlockDevice::run_inline`]), shared by the production and copy sides.

use crate::storage::{BlockDevice, Inline, Request};

/// Run `req` here if `dev` takes it inline now, else hand it back.
///
/// A flush waits for the disk (milliseconds when it is busy), so it runs
/// under `block_in_place`, which lets the runtime move this worker's other
/// tasks elsewhere meanwhile; on a current-thread runtime that is not
/// possible and the flush is declined. A small page-cache write takes
/// microseconds and runs directly.
pub(super) fn run_here(dev: &dyn BlockDevice, req: Request) -> Inline {
    if !dev.inline_ready(&req) {
        return Inline::Declined(req);
    }
    if matches!(req, Request::Flush) {
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi {
            return Inline::Declined(req);
        }
        return tokio::task::block_in_place(|| dev.run_inline(req));
    }
    dev.run_inline(req)
}
