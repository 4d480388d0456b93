//! File reads and writes whose errors name the file and keep the I/O error as their source: the one
//! [`FileError`] that every layer's error type wraps, instead of each declaring its own read and write variants.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FileError {
    /// For `map_err` on a read of `path`.
    pub fn reading(path: &Path) -> impl Fn(std::io::Error) -> FileError + '_ {
        move |source| FileError::Read { path: path.to_path_buf(), source }
    }

    /// For `map_err` on a write of `path` (or a folder created for it).
    pub fn writing(path: &Path) -> impl Fn(std::io::Error) -> FileError + '_ {
        move |source| FileError::Write { path: path.to_path_buf(), source }
    }
}

pub fn read_to_string(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(FileError::reading(path))
}

pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), FileError> {
    std::fs::write(path, contents).map_err(FileError::writing(path))
}

pub fn create_dir_all(path: &Path) -> Result<(), FileError> {
    std::fs::create_dir_all(path).map_err(FileError::writing(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_keep_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.txt");
        let err = read_to_string(&missing).unwrap_err();
        assert!(matches!(&err, FileError::Read { path, .. } if *path == missing));
        assert!(crate::util::error_chain(&err).contains("missing.txt: No such file"), "{err}");
        let err = write(&dir.path().join("no/such/folder/x"), "x").unwrap_err();
        assert!(matches!(err, FileError::Write { .. }));
        create_dir_all(&dir.path().join("a/b")).unwrap();
        write(&dir.path().join("a/b/x"), "text").unwrap();
        assert_eq!(read_to_string(&dir.path().join("a/b/x")).unwrap(), "text");
    }
}
