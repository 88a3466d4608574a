//! Network namespaces: a handle to one ([`Netns`]), a way to run code inside
//! it, and creation/deletion of named namespaces the way `ip netns add/del`
//! does them (a bind mount under `/run/netns`).
//!
//! Why threads: `setns(2)` with `CLONE_NEWNET` switches only the calling
//! thread, and a netlink socket belongs to the namespace it was *created* in
//! for its whole life. So [`Netns::run`] starts a short-lived thread, enters
//! the namespace there, runs the closure (typically: create a socket) and
//! returns its result; the socket then keeps working from any thread. The
//! caller's own threads never change namespace, which keeps a tokio runtime
//! safe.
//!
//! This module owns nothing but the namespace files it is asked to create; it
//! never touches interfaces, addresses or XFRM state (see [`crate::testbed`]
//! and [`crate::xfrm`]).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where `ip netns` keeps named namespaces; using the same place makes our
/// namespaces visible to `ip netns exec`, `ip -n`, tcpdump and friends.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of namespace handling. Each names the namespace path involved.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "cannot enter network namespace {path}: {source}{}",
        if matches!(source, Errno::EPERM) { " (entering a namespace needs CAP_SYS_ADMIN)" } else { "" }
    )]
    Enter { path: PathBuf, source: Errno },
    #[error("network namespace {path} already exists")]
    AlreadyExists { path: PathBuf },
    #[error(
        "cannot create network namespace {path}: {step}: {source}{}",
        if matches!(source, Errno::EPERM) { " (creating a namespace needs CAP_SYS_ADMIN)" } else { "" }
    )]
    Create {
        path: PathBuf,
        step: &'static str,
        source: Errno,
    },
    #[error("cannot delete network namespace {path}: {step}: {source}")]
    Delete {
        path: PathBuf,
        step: &'static str,
        source: Errno,
    },
    #[error("the thread running code in network namespace {path} panicked")]
    ThreadPanicked { path: PathBuf },
    #[error("cannot write sysctl {key} in network namespace {netns}: {source}")]
    Sysctl {
        netns: String,
        key: String,
        source: io::Error,
    },
    #[error("cannot start a thread for network namespace {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
}

/// A network namespace: the caller's current one, or a namespace file
/// (`/run/netns/NAME`, `/proc/PID/ns/net`, or any bind-mounted nsfs file).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Netns {
    /// The namespace of the calling thread; code runs without a thread hop.
    Current,
    /// A namespace file, opened anew each time it is entered.
    Path(PathBuf),
}

impl Netns {
    /// The calling thread's namespace.
    pub fn current() -> Self {
        Netns::Current
    }

    /// A named namespace under [`NETNS_RUN_DIR`], as created by `ip netns add`
    /// or [`Netns::create_named`]. The name is validated, not looked up.
    pub fn named(name: &str) -> Result<Self, NetnsError> {
        validate_name(name)?;
        Ok(Netns::Path(Path::new(NETNS_RUN_DIR).join(name)))
    }

    /// The namespace of process `pid`.
    pub fn of_pid(pid: u32) -> Self {
        Netns::Path(PathBuf::from(format!("/proc/{pid}/ns/net")))
    }

    /// Any nsfs file.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Netns::Path(path.into())
    }

    /// A human-readable description for error messages.
    pub fn describe(&self) -> String {
        match self {
            Netns::Current => "<current>".to_string(),
            Netns::Path(p) => p.display().to_string(),
        }
    }

    /// Runs `f` on a short-lived thread that has entered this namespace and
    /// returns its result. Blocks the caller until `f` returns, so keep `f`
    /// short (create a socket, write a sysctl). For [`Netns::Current`], `f`
    /// runs on the calling thread.
    pub fn run<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = match self {
            Netns::Current => return Ok(f()),
            Netns::Path(p) => p,
        };
        // Open before spawning so a missing namespace fails without a thread.
        let ns_file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, move || {
                    setns(ns_file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetnsError::Enter {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::Spawn {
                    path: path.clone(),
                    source,
                })?;
            worker
                .join()
                .map_err(|_| NetnsError::ThreadPanicked { path: path.clone() })?
        })
    }

    /// Creates a new, empty network namespace named `name` (only `lo`, down)
    /// and pins it with a bind mount at `/run/netns/NAME`, as `ip netns add`
    /// does. Fails if the name is taken.
    pub fn create_named(name: &str) -> Result<Self, NetnsError> {
        validate_name(name)?;
        let dir = Path::new(NETNS_RUN_DIR);
        let path = dir.join(name);
        let create_err = |step, source| NetnsError::Create {
            path: path.clone(),
            step,
            source,
        };
        prepare_run_dir(dir).map_err(|(step, e)| create_err(step, e))?;
        // The mount point: an empty file, created exclusively so that two
        // creators of the same name cannot both succeed.
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::AlreadyExists { path });
            }
            Err(e) => {
                return Err(create_err(
                    "create mount point",
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                ));
            }
        }
        let result = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<(), (&'static str, Errno)> {
                    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("unshare", e))?;
                    // thread-self, not self: only this thread switched.
                    mount(
                        Some("/proc/thread-self/ns/net"),
                        &path,
                        Some("none"),
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(|e| ("bind mount", e))
                })
                .join()
                .unwrap_or(Err(("thread panicked", Errno::EIO)))
        });
        match result {
            Ok(()) => Ok(Netns::Path(path)),
            Err((step, e)) => {
                let _ = fs::remove_file(&path);
                Err(create_err(step, e))
            }
        }
    }

    /// Deletes the named namespace `name` (lazy unmount, then unlink), as
    /// `ip netns del` does. The namespace itself disappears once no process,
    /// socket or mount holds it any more; its interfaces go with it.
    pub fn delete_named(name: &str) -> Result<(), NetnsError> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let delete_err = |step, source| NetnsError::Delete {
            path: path.clone(),
            step,
            source,
        };
        umount2(&path, MntFlags::MNT_DETACH).map_err(|e| delete_err("unmount", e))?;
        fs::remove_file(&path).map_err(|e| {
            delete_err(
                "unlink",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })
    }

    /// Writes `value` to the sysctl file `key` (a path below `/proc/sys`,
    /// e.g. `net/ipv4/ip_forward`) as seen from inside this namespace.
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let file = Path::new("/proc/sys").join(key);
        // /proc/sys/net resolves against the opening thread's namespace.
        self.run(|| fs::write(&file, value))?
            .map_err(|source| NetnsError::Sysctl {
                netns: self.describe(),
                key: key.to_string(),
                source,
            })
    }
}

/// Makes `/run/netns` exist and be a shared mount point, so that namespace
/// bind mounts made here propagate to other mount namespaces (iproute2 does
/// the same; `ip netns exec` relies on it).
fn prepare_run_dir(dir: &Path) -> Result<(), (&'static str, Errno)> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => {
            return Err((
                "create /run/netns",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            ));
        }
    }
    let make_shared = || {
        mount(
            Some("none"),
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet. Bind it onto itself, then retry.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| ("bind /run/netns onto itself", e))?;
            make_shared().map_err(|e| ("make /run/netns shared", e))
        }
        Err(e) => Err(("make /run/netns shared", e)),
    }
}

fn validate_name(name: &str) -> Result<(), NetnsError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name.contains('/') || name.contains('\0') {
        Some("contains '/' or NUL")
    } else if name.len() > 200 {
        Some("longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetnsError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Netns::named("gw-a").is_ok());
        for bad in ["", ".", "..", "a/b", "x\0y"] {
            assert!(
                matches!(Netns::named(bad), Err(NetnsError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            Netns::named("gw").unwrap(),
            Netns::Path(PathBuf::from("/run/netns/gw"))
        );
        assert_eq!(
            Netns::of_pid(42),
            Netns::Path(PathBuf::from("/proc/42/ns/net"))
        );
    }

    #[test]
    fn current_runs_inline() {
        let here = std::thread::current().id();
        let there = Netns::current()
            .run(|| std::thread::current().id())
            .unwrap();
        assert_eq!(here, there);
    }

    #[test]
    fn entering_own_namespace_by_path_runs_on_another_thread() {
        // /proc/self/ns/net is enterable by its own process with
        // CAP_SYS_ADMIN (root: CI and the rig); without it the answer must
        // be a clear Enter error. Which one is expected is decided up front,
        // so a root run that fails to enter fails the test.
        let here = std::thread::current().id();
        let result = Netns::path("/proc/self/ns/net").run(|| std::thread::current().id());
        if nix::unistd::geteuid().is_root() {
            assert_ne!(here, result.expect("root enters its own namespace"));
        } else {
            match result {
                Err(NetnsError::Enter { source, .. }) => assert_eq!(source, Errno::EPERM),
                other => panic!("without root expected EPERM, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_namespace_is_an_open_error() {
        let err = Netns::path("/nonexistent/netns/file")
            .run(|| ())
            .unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/netns/file"));
    }
}
