//! Files that hold secrets: bootstrap secrets, the at-rest credential, and
//! (encrypted) key pools.
//!
//! Owns the permission rules and the atomic-write recipe; knows nothing of
//! what the files mean. A secret file must be a regular file owned by the
//! effective user with no group/other permission bits (`mode & 0o077 == 0`);
//! anything else is refused with a message that names the path, the mode and
//! the command that fixes it. The checks run on the opened descriptor
//! (`fstat`), not on the path, so the file cannot be swapped between check
//! and read. Reads go straight into [`SecretBytes`]; writes go to a 0600
//! temporary file in the same directory, are fsynced, renamed over the
//! target, and the directory is fsynced, so a crash leaves either the old or
//! the new file, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use super::SecretBytes;

/// Largest secret file read: bootstrap secrets and credentials are short.
pub const MAX_SECRET_FILE_BYTES: u64 = 1 << 20;

/// Why a secret file could not be read or written. Never carries contents.
#[derive(Debug, Error)]
pub enum SecretFileError {
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} has mode {mode:04o}: group or others have access to a secret; run `chmod 600 {path}`",
        path = path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "{path} is owned by uid {owner}, not by this process (uid {ours}); run `chown {ours} {path}`",
        path = path.display()
    )]
    NotOwned {
        path: PathBuf,
        owner: u32,
        ours: u32,
    },
    #[error("{}: not a regular file", path.display())]
    NotRegular { path: PathBuf },
    #[error("{}: {len} bytes, more than the {max} allowed for a secret file", path.display())]
    TooLarge { path: PathBuf, len: u64, max: u64 },
    #[error("{}: the file changed size while it was read; retry", path.display())]
    Changed { path: PathBuf },
}

fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> SecretFileError + 'a {
    move |source| SecretFileError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Checks an opened file: regular, ours, no group/other bits. Returns its
/// length.
pub fn check_private(path: &Path, file: &File) -> Result<u64, SecretFileError> {
    let meta = file.metadata().map_err(io_err(path, "stat"))?;
    let ours = nix::unistd::geteuid().as_raw();
    check_attributes(
        path,
        meta.file_type().is_file(),
        meta.uid(),
        meta.mode(),
        ours,
    )?;
    Ok(meta.len())
}

/// The rule itself, apart from `fstat`, so that every branch is testable
/// without root.
fn check_attributes(
    path: &Path,
    is_file: bool,
    owner: u32,
    mode: u32,
    ours: u32,
) -> Result<(), SecretFileError> {
    if !is_file {
        return Err(SecretFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if owner != ours {
        return Err(SecretFileError::NotOwned {
            path: path.to_path_buf(),
            owner,
            ours,
        });
    }
    let mode = mode & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Opens an existing secret file for reading after [`check_private`].
/// Returns the file and its length.
pub fn open_private(path: &Path) -> Result<(File, u64), SecretFileError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let len = check_private(path, &file)?;
    Ok((file, len))
}

/// Appends `bytes` to a secret file with one write (O_APPEND keeps lines
/// from two writers whole) and syncs it: created 0600, an existing file
/// others could read is refused. Blocking.
pub fn append_private(path: &Path, bytes: &[u8]) -> Result<(), SecretFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path, "open for appending"))?;
    check_private(path, &file)?;
    file.write_all(bytes).map_err(io_err(path, "append to"))?;
    file.sync_data().map_err(io_err(path, "fsync"))
}

/// Reads a whole secret file into locked, zeroised-on-drop memory, refusing
/// files that others could read. No plain `Vec` ever holds the contents.
pub fn load_secret_file(path: &Path) -> Result<SecretBytes, SecretFileError> {
    let (mut file, len) = open_private(path)?;
    if len > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge {
            path: path.to_path_buf(),
            len,
            max: MAX_SECRET_FILE_BYTES,
        });
    }
    let mut secret = SecretBytes::zeroed(len as usize);
    file.read_exact(secret.expose_mut())
        .map_err(io_err(path, "read"))?;
    // A file that grew after fstat would otherwise be read in part.
    let mut probe = [0u8; 1];
    if file.read(&mut probe).map_err(io_err(path, "read"))? != 0 {
        return Err(SecretFileError::Changed {
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

/// Writes `secret` to `path` atomically, mode 0600.
pub fn write_secret_file(path: &Path, secret: &SecretBytes) -> Result<(), SecretFileError> {
    write_private_atomic(path, &[secret.expose()])
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of the temporary files [`write_private_atomic`] makes next to
/// `path`, so a caller can clean up after a crash.
pub fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tmp-")
}

/// Temporary 0600 file → write `parts` → fsync → rename over `path` →
/// fsync the directory. On error the temporary file is removed.
pub fn write_private_atomic(path: &Path, parts: &[&[u8]]) -> Result<(), SecretFileError> {
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        "{}{}-{}",
        temp_prefix(path),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        for p in parts {
            f.write_all(p).map_err(io_err(&tmp, "write"))?;
        }
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        fs::rename(&tmp, path).map_err(io_err(path, "rename a temporary file over"))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so that a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), SecretFileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SecretFileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir, "create directory"))
}

/// A directory under the system temp dir, removed on drop (tests only).
#[cfg(test)]
pub(crate) struct TestDir(PathBuf);

#[cfg(test)]
impl TestDir {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "qkd-ipsec-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        ensure_private_dir(&p).expect("create test directory");
        Self(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn write_then_load_roundtrips_with_mode_0600() {
        let dir = TestDir::new("secret-file");
        let path = dir.path().join("bootstrap.key");
        let secret = SecretBytes::random(48).unwrap();
        write_secret_file(&path, &secret).unwrap();
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(load_secret_file(&path).unwrap().ct_eq(&secret));
        // Overwrite atomically; no temporary file is left behind.
        let other = SecretBytes::random(16).unwrap();
        write_secret_file(&path, &other).unwrap();
        assert!(load_secret_file(&path).unwrap().ct_eq(&other));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("bootstrap.key")]);
    }

    #[test]
    fn group_or_world_access_is_refused_with_the_fix() {
        let dir = TestDir::new("secret-file");
        let path = dir.path().join("s");
        write_secret_file(&path, &SecretBytes::from_slice(b"x")).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o610, 0o644] {
            chmod(&path, mode);
            let err = load_secret_file(&path).unwrap_err();
            assert!(
                matches!(err, SecretFileError::TooOpen { mode: m, .. } if m == mode),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
        }
        chmod(&path, 0o400);
        assert_eq!(load_secret_file(&path).unwrap().expose(), b"x");
    }

    #[test]
    fn directories_missing_files_and_huge_files_are_refused() {
        let dir = TestDir::new("secret-file");
        chmod(dir.path(), 0o700);
        assert!(matches!(
            load_secret_file(dir.path()),
            Err(SecretFileError::NotRegular { .. })
        ));
        let missing = dir.path().join("missing");
        let err = load_secret_file(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let big = dir.path().join("big");
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&big)
            .unwrap();
        f.set_len(MAX_SECRET_FILE_BYTES + 1).unwrap();
        assert!(matches!(
            load_secret_file(&big),
            Err(SecretFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn files_owned_by_someone_else_are_refused() {
        let p = Path::new("/etc/qkd/boot.key");
        let err = check_attributes(p, true, 65534, 0o600, 0).unwrap_err();
        assert!(matches!(
            err,
            SecretFileError::NotOwned {
                owner: 65534,
                ours: 0,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/qkd/boot.key") && msg.contains("chown 0"),
            "{msg}"
        );
        assert!(check_attributes(p, true, 7, 0o100600, 7).is_ok());
        assert!(check_attributes(p, true, 7, 0o100400, 7).is_ok());
        assert!(matches!(
            check_attributes(p, true, 7, 0o100660, 7),
            Err(SecretFileError::TooOpen { mode: 0o660, .. })
        ));
    }
}
