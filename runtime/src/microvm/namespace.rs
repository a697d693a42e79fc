//! Reading another namespace from the init: a thread joins it, so the init
//! itself stays where it is (setns of a network or UTS namespace changes
//! only the calling thread's).

use std::fs::File;

use nix::sched::CloneFlags;

/// Runs `f` on a thread that first joins the namespace of `kind` that
/// `namespace` is open on; what `f` returned, or why the thread could not
/// join (or ended without an answer).
pub fn within<T: Send>(
    namespace: &File,
    kind: CloneFlags,
    f: impl FnOnce() -> T + Send,
) -> nix::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| nix::sched::setns(namespace, kind).map(|()| f()))
            .join()
            .unwrap_or(Err(nix::Error::EIO))
    })
}
