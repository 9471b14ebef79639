//! Forward-secure sealing: a MAC key that evolves through a one-way function after every seal,
//! the forward-secure MAC of Bellare and Yee ("Forward-Security in Private-Key Cryptography",
//! CT-RSA 2003), with HMAC-SHA-256 as the MAC and SHA-256 as the key update.
//!
//! The host holds only the current key `k_i`; the auditor holds the first, `k_0` (the
//! verification key, kept off the host), from which every later key follows. Whoever takes the
//! host learns `k_i` and can seal what comes next, but cannot compute `k_0 … k_(i-1)`, so the
//! seals already written cannot be redone over changed records. A seal record's tag covers its
//! epoch, its own sequence number and the hash of the record before it, which chains back over
//! every earlier record.

use std::{
    fs::OpenOptions,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use hmac::Mac as _;
use sha2::{Digest as _, Sha256};

use crate::notify::keyed;

const KEY_BYTES: usize = 32;
/// How a verification key is written: a prefix that names the scheme, then `k_0` in hex.
const VERIFICATION_PREFIX: &str = "gkseal1-";
const EVOLVE_LABEL: &[u8] = b"gatekeeper seal key evolution v1";
const TAG_LABEL: &[u8] = b"gatekeeper seal v1";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealing key {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("sealing key {path} is unreadable: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "sealing key {path} is readable by group or others (mode {mode:o}): chmod 600 {path}, then make a new key (`gatekeeper journal setup-keys`), since this one may have been read"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "a sealing key already exists at {0}: its verification key was printed when it was made; to start over, move it away first"
    )]
    Exists(PathBuf),
    #[error(
        "sealing key {path} is at epoch {key}, but the journal's last seal is {}: the key or the journal was replaced; check the journal with `gatekeeper journal verify --key`, then move the key away and make a new one (`gatekeeper journal setup-keys`)",
        journal.map_or("none".to_owned(), |epoch| format!("of epoch {epoch}"))
    )]
    OutOfStep {
        path: PathBuf,
        key: u64,
        journal: Option<u64>,
    },
    #[error("sealing key {path} could not be guarded from agents, so none was made: {why}")]
    Unguarded { path: PathBuf, why: String },
    #[error(
        "not a verification key: expected {VERIFICATION_PREFIX} followed by 64 hex digits, as `gatekeeper journal setup-keys` printed it"
    )]
    BadVerificationKey,
}

fn evolve(key: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(EVOLVE_LABEL);
    hasher.update(key);
    hasher.finalize().into()
}

/// The tag of a seal in `epoch` written as record `seq` after the record whose hash is `prev`.
fn tag(key: &[u8; KEY_BYTES], epoch: u64, seq: u64, prev: &str) -> [u8; 32] {
    let mut mac = keyed(key);
    mac.update(TAG_LABEL);
    mac.update(&epoch.to_be_bytes());
    mac.update(&seq.to_be_bytes());
    mac.update(prev.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The key file's one line: `gkseal-key1 <epoch, 20 digits> <key, 64 hex>`. Its length never
/// changes, so each update is one small write in place: the file keeps its inode, which the
/// kernel guards from agents, and a single-sector write leaves the old line or the new one.
const KEY_FILE_TAG: &str = "gkseal-key1";
const KEY_LINE_BYTES: usize = KEY_FILE_TAG.len() + 1 + 20 + 1 + 2 * KEY_BYTES + 1;

fn key_line(epoch: u64, key: &[u8; KEY_BYTES]) -> String {
    format!("{KEY_FILE_TAG} {epoch:020} {}\n", hex::encode(key))
}

fn parse_key_line(text: &str) -> Option<(u64, [u8; KEY_BYTES])> {
    let mut fields = text.strip_suffix('\n')?.split(' ');
    let (Some(KEY_FILE_TAG), Some(epoch), Some(key), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    if epoch.len() != 20 {
        return None;
    }
    Some((epoch.parse().ok()?, decode_key(key)?))
}

/// The host's current sealing key, bound to its file: every seal moves the file on to the next
/// key before the seal is written, so the key of a written seal is not kept on disk (what the
/// file system or the device keeps of overwritten blocks is beyond this).
pub struct SealKey {
    path: PathBuf,
    epoch: u64,
    key: [u8; KEY_BYTES],
}

/// One seal to write: the epoch and the tag, made with a key that is no longer on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub epoch: u64,
    pub tag: String,
}

impl SealKey {
    /// Makes a new key at `path` (0600; never over an existing one); returns it and the
    /// verification key for the auditor. The key is written into a file with no name yet
    /// (O_TMPFILE), which nobody can open; `guard` runs on it first (the daemon puts it out of
    /// agents' reach there), and only then is it linked at `path`. If `guard` fails, nothing is
    /// left behind.
    pub fn create(
        path: &Path,
        guard: impl FnOnce(&std::fs::Metadata) -> Result<(), String>,
    ) -> Result<(Self, VerificationKey), SealError> {
        use std::os::fd::AsRawFd as _;
        let io = |cause| SealError::Io {
            path: path.to_owned(),
            cause,
        };
        let dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(SealError::Exists(path.to_owned()));
        }
        let file = OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
            .map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        guard(&metadata).map_err(|why| SealError::Unguarded {
            path: path.to_owned(),
            why,
        })?;
        let mut key = [0u8; KEY_BYTES];
        getrandom::fill(&mut key).map_err(|error| io(std::io::Error::other(error.to_string())))?;
        write_key_line(&file, 0, &key).map_err(io)?;
        // The file's name in /proc, followed: a link needs no capability that way.
        let unnamed = format!("/proc/self/fd/{}", file.as_raw_fd());
        nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            unnamed.as_str(),
            nix::fcntl::AT_FDCWD,
            path,
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        )
        .map_err(|errno| match errno {
            nix::errno::Errno::EEXIST => SealError::Exists(path.to_owned()),
            errno => io(std::io::Error::from(errno)),
        })?;
        let sealing = Self {
            path: path.to_owned(),
            epoch: 0,
            key,
        };
        Ok((sealing, VerificationKey { first: key }))
    }

    /// Reads the key at `path`, refusing one that group or others could read.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let io = |cause| SealError::Io {
            path: path.to_owned(),
            cause,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SealError::Exposed {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
        let malformed = |reason: String| SealError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        let (epoch, key) = parse_key_line(&text).ok_or_else(|| {
            malformed(format!(
                "expected one line of {KEY_LINE_BYTES} bytes: {KEY_FILE_TAG}, the epoch and the key"
            ))
        })?;
        Ok(Self {
            path: path.to_owned(),
            epoch,
            key,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The seal of record `seq`, which follows the record hashed `prev`, made with the current
    /// key. Nothing moves on until [`SealKey::advance`]: a seal that could not be written is
    /// made again at the same epoch, and the journal's epochs have no gaps.
    pub fn seal(&self, seq: u64, prev: &str) -> Seal {
        Seal {
            epoch: self.epoch,
            tag: hex::encode(tag(&self.key, self.epoch, seq, prev)),
        }
    }

    /// Once the current epoch's seal is durable: moves on to the next key and overwrites this
    /// one, in memory and then on disk. A file left a key behind by a failed write or a crash
    /// is brought forward by [`SealKey::catch_up`] at the next start.
    pub fn advance(&mut self) -> Result<(), SealError> {
        self.key = evolve(&self.key);
        self.epoch += 1;
        self.store()
    }

    /// Brings the key in step with the journal, whose last seal is of epoch `last_sealed`
    /// (None: it has none). A key whose seal was written but that did not move on does now;
    /// any other mismatch means the key or the journal was replaced, and sealing on would
    /// leave a gap that no verifier accepts.
    pub fn catch_up(&mut self, last_sealed: Option<u64>) -> Result<(), SealError> {
        match last_sealed {
            Some(epoch) if epoch == self.epoch => self.advance(),
            Some(epoch) if epoch.checked_add(1) == Some(self.epoch) => Ok(()),
            None if self.epoch == 0 => Ok(()),
            journal => Err(SealError::OutOfStep {
                path: self.path.clone(),
                key: self.epoch,
                journal,
            }),
        }
    }

    /// Writes the key line over the old one in place, durably.
    fn store(&self) -> Result<(), SealError> {
        let io = |cause| SealError::Io {
            path: self.path.clone(),
            cause,
        };
        // Same length every time: nothing of the old line is left past the new one.
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        write_key_line(&file, self.epoch, &self.key).map_err(io)
    }
}

/// Writes the key line at the start of `file` and makes it durable.
fn write_key_line(file: &std::fs::File, epoch: u64, key: &[u8; KEY_BYTES]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    file.write_all_at(key_line(epoch, key).as_bytes(), 0)?;
    file.sync_data()
}

fn decode_key(text: &str) -> Option<[u8; KEY_BYTES]> {
    hex::decode(text).ok()?.try_into().ok()
}

/// The auditor's key: `k_0`, from which the key of every epoch follows.
#[derive(Clone, PartialEq, Eq)]
pub struct VerificationKey {
    first: [u8; KEY_BYTES],
}

impl std::fmt::Display for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{VERIFICATION_PREFIX}{}", hex::encode(self.first))
    }
}

impl std::str::FromStr for VerificationKey {
    type Err = SealError;

    fn from_str(text: &str) -> Result<Self, SealError> {
        text.trim()
            .strip_prefix(VERIFICATION_PREFIX)
            .and_then(decode_key)
            .map(|first| Self { first })
            .ok_or(SealError::BadVerificationKey)
    }
}

impl VerificationKey {
    /// Walks the key forward from epoch `from` (whose key is `key`) to `epoch`.
    fn key_at(key: [u8; KEY_BYTES], from: u64, epoch: u64) -> [u8; KEY_BYTES] {
        (from..epoch).fold(key, |key, _| evolve(&key))
    }
}

/// Checks seals in journal order, walking the key forward only as far as each seal needs.
pub struct SealChecker {
    epoch: u64,
    key: [u8; KEY_BYTES],
    /// The epoch of the last seal checked: each seal's is the next (the daemon makes a seal
    /// that could not be written again at the same epoch, so a gap is seals cut out).
    last: Option<u64>,
}

impl SealChecker {
    pub fn new(verification: &VerificationKey) -> Self {
        Self {
            epoch: 0,
            key: verification.first,
            last: None,
        }
    }

    /// Checks the seal of `epoch` with `tag`, written as record `seq` after the record hashed
    /// `prev`.
    pub fn check(&mut self, epoch: u64, tag_hex: &str, seq: u64, prev: &str) -> Result<(), String> {
        let expected_epoch = self.last.map_or(0, |last| last + 1);
        if epoch != expected_epoch {
            return Err(match self.last {
                Some(last) => format!(
                    "seal of epoch {epoch} after one of epoch {last}: the seals between were cut out"
                ),
                None => format!(
                    "the first seal is of epoch {epoch}, not 0: the seals before it were cut out"
                ),
            });
        }
        let key = VerificationKey::key_at(self.key, self.epoch, epoch);
        let expected = tag(&key, epoch, seq, prev);
        let given = hex::decode(tag_hex).map_err(|_| "seal tag is not hex".to_owned())?;
        // Both are public once written; plain comparison leaks nothing worth having.
        if given != expected {
            return Err(format!(
                "seal of epoch {epoch} does not verify: the records before it were changed, or it was not made with this key"
            ));
        }
        self.epoch = epoch;
        self.key = key;
        self.last = Some(epoch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("gk-seal-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const PREV: &str = "ab";

    /// A seal as the journal makes it: written, then the key moves on.
    fn seal_written(key: &mut SealKey, seq: u64) -> Seal {
        let seal = key.seal(seq, PREV);
        key.advance().unwrap();
        seal
    }

    #[test]
    fn seals_verify_with_the_first_key_and_the_key_file_moves_on() {
        let dir = Dir::new("verify");
        let path = dir.0.join("seal.key");
        let (mut key, verification) = SealKey::create(&path, |_| Ok(())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let seals: Vec<Seal> = (0..5).map(|seq| seal_written(&mut key, seq * 10)).collect();
        assert_eq!(
            seals.iter().map(|seal| seal.epoch).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(SealKey::load(&path).unwrap().epoch(), 5);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), KEY_LINE_BYTES, "{text}");
        let mut checker = SealChecker::new(&verification);
        for (seq, seal) in (0..5).map(|seq| seq * 10).zip(&seals) {
            checker.check(seal.epoch, &seal.tag, seq, PREV).unwrap();
        }
        // Parsed back from its printed form, it verifies the same seals, with no gap between
        // them and from epoch 0: seals cut out are found.
        let printed: VerificationKey = verification.to_string().parse().unwrap();
        let mut checker = SealChecker::new(&printed);
        checker.check(0, &seals[0].tag, 0, PREV).unwrap();
        let gap = checker.check(2, &seals[2].tag, 20, PREV).unwrap_err();
        assert!(gap.contains("cut out"), "{gap}");
        let mut checker = SealChecker::new(&printed);
        let late_start = checker.check(1, &seals[1].tag, 10, PREV).unwrap_err();
        assert!(late_start.contains("not 0"), "{late_start}");
    }

    #[test]
    fn a_seal_not_written_is_made_again_at_its_epoch_and_the_key_catches_up() {
        let dir = Dir::new("catch-up");
        let path = dir.0.join("seal.key");
        let (mut key, verification) = SealKey::create(&path, |_| Ok(())).unwrap();
        key.catch_up(None).unwrap();
        // A seal whose write failed: the next one is of the same epoch, at the new place.
        let lost = key.seal(0, PREV);
        let again = seal_written(&mut key, 1);
        assert_eq!((lost.epoch, again.epoch), (0, 0));
        let mut checker = SealChecker::new(&verification);
        checker.check(again.epoch, &again.tag, 1, PREV).unwrap();
        // A crash after the seal was written, before the key moved on: the journal's last
        // seal is of the key's epoch, and the key moves on at start.
        let written = key.seal(2, PREV);
        let mut restarted = SealKey::load(&path).unwrap();
        assert_eq!(restarted.epoch(), 1);
        restarted.catch_up(Some(written.epoch)).unwrap();
        assert_eq!(SealKey::load(&path).unwrap().epoch(), 2);
        restarted.catch_up(Some(1)).unwrap();
        // A key or journal replaced: named, not sealed on.
        for journal in [None, Some(0), Some(5)] {
            let error = restarted.catch_up(journal).unwrap_err().to_string();
            assert!(error.contains("epoch 2"), "{error}");
        }
    }

    #[test]
    fn a_seal_over_other_records_or_at_another_place_fails() {
        let dir = Dir::new("moved");
        let (mut key, verification) = SealKey::create(&dir.0.join("seal.key"), |_| Ok(())).unwrap();
        let seal = seal_written(&mut key, 7);
        for (seq, prev) in [(7, "ac"), (8, PREV)] {
            let mut checker = SealChecker::new(&verification);
            assert!(checker.check(seal.epoch, &seal.tag, seq, prev).is_err());
        }
        // Each seal's epoch is the next: a seal replayed later fails.
        let next = seal_written(&mut key, 9);
        let mut checker = SealChecker::new(&verification);
        checker.check(seal.epoch, &seal.tag, 7, PREV).unwrap();
        checker.check(next.epoch, &next.tag, 9, PREV).unwrap();
        assert!(checker.check(seal.epoch, &seal.tag, 7, PREV).is_err());
    }

    #[test]
    fn the_current_key_cannot_forge_an_earlier_seal() {
        let dir = Dir::new("forge");
        let path = dir.0.join("seal.key");
        let (mut key, verification) = SealKey::create(&path, |_| Ok(())).unwrap();
        let seals: Vec<Seal> = (0..3).map(|seq| seal_written(&mut key, seq)).collect();
        // What an attacker finds on the host: epoch 3's key. A seal of changed records as an
        // earlier epoch does not verify, and seals of epoch 3 or later verify only after every
        // seal before them: the sealed records cannot be cut out and replaced.
        let stolen = SealKey::load(&path).unwrap();
        for epoch in 0..3 {
            let forged = hex::encode(tag(&stolen.key, epoch, 1, "changed"));
            let mut checker = SealChecker::new(&verification);
            for (seq, seal) in seals.iter().enumerate().take(epoch as usize) {
                checker
                    .check(seal.epoch, &seal.tag, seq as u64, PREV)
                    .unwrap();
            }
            assert!(checker.check(epoch, &forged, 1, "changed").is_err());
        }
        let future = stolen.seal(5, PREV);
        let mut checker = SealChecker::new(&verification);
        assert!(checker.check(future.epoch, &future.tag, 5, PREV).is_err());
        for (seq, seal) in seals.iter().enumerate() {
            checker
                .check(seal.epoch, &seal.tag, seq as u64, PREV)
                .unwrap();
        }
        checker.check(future.epoch, &future.tag, 5, PREV).unwrap();
    }

    #[test]
    fn bad_keys_and_files_are_named() {
        let dir = Dir::new("bad");
        let path = dir.0.join("seal.key");
        SealKey::create(&path, |_| Ok(())).unwrap();
        assert!(matches!(
            SealKey::create(&path, |_| Ok(())),
            Err(SealError::Exists(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let exposed = SealKey::load(&path).err().unwrap().to_string();
        assert!(exposed.contains("chmod 600"), "{exposed}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "gkseal-key1 1 00\n").unwrap();
        assert!(matches!(
            SealKey::load(&path),
            Err(SealError::Malformed { .. })
        ));
        let unguarded = dir.0.join("unguarded.key");
        assert!(matches!(
            SealKey::create(&unguarded, |_| Err("no kernel".into())),
            Err(SealError::Unguarded { .. })
        ));
        assert!(!unguarded.exists(), "nothing is left behind");
        for text in ["", "gkseal1-zz", "deadbeef", "gkseal1-00"] {
            assert!(text.parse::<VerificationKey>().is_err(), "{text}");
        }
    }
}
