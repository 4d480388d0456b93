//! The check made before an existing store file is opened: it must be an SQLite database. An empty (0-byte)
//! file or one of another format is refused with a clear error instead of being silently started as (or
//! turned into) an empty store. A path that does not exist yet is a new store and is fine.

use std::io::Read;
use std::path::Path;

use super::StoreError;

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses an existing file at `path` that is not an SQLite database.
pub fn check_existing(path: &Path) -> Result<(), StoreError> {
    let location = path.display().to_string();
    let refuse = |reason: String| StoreError::NotADatabase { location: location.clone(), reason };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StoreError::Read { location: location.clone(), source }),
    };
    let mut header = Vec::with_capacity(16);
    (&mut file)
        .take(16)
        .read_to_end(&mut header)
        .map_err(|source| StoreError::Read { location: location.clone(), source })?;
    if header.is_empty() {
        // A database in write-ahead-log mode can have its pages in the log only; that is a store, not a void.
        let wal = path.with_file_name(format!("{}-wal", path.file_name().unwrap_or_default().to_string_lossy()));
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            return Ok(());
        }
        return Err(refuse(
            "the file is empty (0 bytes): not a database. Remove it to start a new store, or restore the store \
             from a backup"
                .into(),
        ));
    }
    if header.as_slice() != SQLITE_HEADER {
        return Err(refuse(format!(
            "the file is not an SQLite database (it starts with {:?}); point the store at a Duet database, or at a \
             path that does not exist yet to start a new one",
            String::from_utf8_lossy(&header)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_foreign_files_are_refused_new_and_sqlite_ones_accepted() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_existing(&dir.path().join("new.db")).is_ok(), "a new store");
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let err = check_existing(&empty).unwrap_err();
        assert!(err.to_string().contains("empty (0 bytes)"), "{err}");
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, b"{\"not\": \"a database\"}").unwrap();
        assert!(check_existing(&garbage).unwrap_err().to_string().contains("not an SQLite database"));
        let short = dir.path().join("short.db");
        std::fs::write(&short, b"SQLite").unwrap();
        assert!(check_existing(&short).is_err(), "a truncated header");
        let real = dir.path().join("real.db");
        std::fs::write(&real, [SQLITE_HEADER.as_slice(), &[0u8; 100]].concat()).unwrap();
        assert!(check_existing(&real).is_ok());
    }
}
