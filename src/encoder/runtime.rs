//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`: nothing is downloaded).
//!
//! Search order: `ORT_DYLIB_PATH`, then the config key `onnxruntime` (`--onnxruntime`, `DUET_ONNXRUNTIME`), then
//! the project's virtual environment (`.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`)
//! under the working directory or any folder above the executable. When none is found, start-up fails with a
//! message that says how to install it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use ort::environment::Environment;

use super::EncoderError;

const INSTALL_HINT: &str = "install it with `scripts/setup` (creates .venv with the onnxruntime==1.31.1 wheel), \
     or point ORT_DYLIB_PATH / --onnxruntime at libonnxruntime.so";

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// Locates the library without loading it.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, EncoderError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(EncoderError::runtime(format!("ORT_DYLIB_PATH={} is not a file; {INSTALL_HINT}", path.display())))
        };
    }
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(EncoderError::runtime(format!(
                "configured onnxruntime {} is not a file; {INSTALL_HINT}",
                path.display()
            )))
        };
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.iter().find_map(|root| find_in_venv(&root.join(".venv"))).ok_or_else(|| {
        EncoderError::runtime(format!(
            "libonnxruntime was not found (ORT_DYLIB_PATH unset, no `onnxruntime` in the config, no .venv in {} or \
             above the executable); {INSTALL_HINT}",
            roots.first().map(|p| p.display().to_string()).unwrap_or_default()
        ))
    })
}

fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
        .collect();
    pythons.sort();
    pythons.into_iter().rev().find_map(|python| {
        let capi = python.join("site-packages/onnxruntime/capi");
        let mut libs: Vec<PathBuf> = std::fs::read_dir(capi)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("libonnxruntime.so") || n.starts_with("libonnxruntime.") && n.ends_with(".dylib")
                })
            })
            .collect();
        libs.sort();
        libs.pop()
    })
}

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment(configured: Option<&Path>) -> Result<&'static Environment, EncoderError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    // ONNX Runtime allows one environment per process: two first callers must not both build one.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = locate(configured)?;
    // A LoadDynamicError must not become an ort::Error: formatting one calls into the (missing) library.
    let builder = ort::init_from(&path).map_err(|e| EncoderError::Runtime {
        message: format!("cannot load {}; {INSTALL_HINT}", path.display()),
        source: Some(std::sync::Arc::new(e)),
    })?;
    let env = builder.with_name("duet").build().map_err(|e| EncoderError::Runtime {
        message: "cannot create the ONNX Runtime environment".into(),
        source: Some(std::sync::Arc::new(e)),
    })?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_that_says_how_to_install_it() {
        // ORT_DYLIB_PATH, when set, is consulted before the configured path (scripts/test does not set it).
        if std::env::var_os("ORT_DYLIB_PATH").is_some() {
            return;
        }
        let bad = Path::new("/nonexistent/libonnxruntime.so.1.31.1");
        let err = locate(Some(bad)).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/libonnxruntime.so.1.31.1"), "{err}");
        assert!(err.contains("scripts/setup") && err.contains("ORT_DYLIB_PATH"), "{err}");
    }

    #[test]
    fn finds_the_versioned_library_inside_a_venv() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir.path().join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        assert_eq!(find_in_venv(&dir.path().join(".venv")), None);
        std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        std::fs::write(capi.join("onnxruntime_pybind11_state.so"), b"").unwrap();
        assert_eq!(find_in_venv(&dir.path().join(".venv")), Some(capi.join("libonnxruntime.so.1.31.1")));
    }
}
