//! Where a model's networks run: the `device` setting (`cpu`, `cuda`, `auto`) and the ONNX Runtime sessions built
//! for it, with their execution providers.
//!
//! `cuda` registers ONNX Runtime's CUDA execution provider (`CUDAExecutionProvider`) and fails the load when it does
//! not register — a CPU-only onnxruntime, no CUDA libraries, no GPU — naming the provider, with ONNX Runtime's
//! reason as the source. `auto` tries CUDA and falls back to the CPU with one warning. Nothing is downloaded: `ort`
//! loads whichever libonnxruntime it is pointed at (the onnxruntime-gpu wheel's for a GPU).
//!
//! Uses `ort` and the util module (error chains for the log).

use std::path::Path;
use std::sync::Arc;

use ort::session::{builder::GraphOptimizationLevel, Session};
use serde::{Deserialize, Serialize};

use super::onnx::SessionOptions;
use super::EncoderError;

/// The device a model's sessions run on: asked for in the config (`[encoder] device`, `DUET_DEVICE`), or, as a
/// loaded model reports it, the one it actually runs on (then never `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// ONNX Runtime's CPU execution provider (the default, and the tested path).
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA execution provider, or the load fails.
    Cuda,
    /// CUDA when its execution provider registers, else the CPU (with one warning).
    Auto,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            "auto" => Ok(Device::Auto),
            other => Err(format!("unknown device `{other}` (expected cpu, cuda or auto)")),
        }
    }
}

/// The name ONNX Runtime gives the CUDA execution provider.
pub const CUDA_PROVIDER: &str = "CUDAExecutionProvider";

/// Whether the loaded ONNX Runtime library was built with the CUDA execution provider (a GPU build); it may still
/// fail to register without CUDA's libraries or a GPU. ONNX Runtime must be loaded (see the runtime module).
pub fn cuda_in_build() -> bool {
    use ort::ep::ExecutionProvider;
    ort::ep::CUDA::is_available().unwrap_or(false)
}

/// Builds a session for the graph at `onnx` on the device `options` ask for, and says which device it runs on.
pub(super) fn session(
    model: &str,
    onnx: &Path,
    env: &ort::environment::Environment,
    options: SessionOptions,
) -> Result<(Session, Device), EncoderError> {
    match options.device {
        Device::Cpu => Ok((build(model, onnx, env, options, Device::Cpu)?, Device::Cpu)),
        Device::Cuda => Ok((build(model, onnx, env, options, Device::Cuda)?, Device::Cuda)),
        Device::Auto => match build(model, onnx, env, options, Device::Cuda) {
            Ok(session) => Ok((session, Device::Cuda)),
            Err(err) => {
                tracing::warn!(model, reason = %crate::util::error_chain(&err),
                    "device = \"auto\": the CUDA execution provider is not usable; running on the CPU");
                Ok((build(model, onnx, env, options, Device::Cpu)?, Device::Cpu))
            }
        },
    }
}

fn build(
    model: &str,
    onnx: &Path,
    env: &ort::environment::Environment,
    options: SessionOptions,
    device: Device,
) -> Result<Session, EncoderError> {
    let failed = |message: String, source: ort::Error| EncoderError::Load {
        model: model.to_string(),
        what: onnx.display().to_string(),
        message,
        source: Some(Arc::new(source)),
    };
    let builder = Session::builder(env)
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(ort::Error::<()>::from))
        .and_then(|b| b.with_intra_threads(options.intra_threads.max(1)).map_err(ort::Error::<()>::from))
        .map_err(|e| failed("ONNX Runtime cannot build a session".into(), e))?;
    let cpu = || ort::ep::CPU::default().with_arena_allocator(options.cpu_arena).build();
    let builder = match device {
        Device::Cuda => {
            // CUDA first, refusing to go on without it; the CPU provider takes the nodes CUDA has no kernel for.
            let cuda = ort::ep::CUDA::default().build().error_on_failure();
            let providers = if options.cpu_arena { vec![cuda] } else { vec![cuda, cpu()] };
            builder.with_execution_providers(providers).map_err(|e| {
                failed(
                    format!(
                        "device = \"cuda\": ONNX Runtime's {CUDA_PROVIDER} did not register (a GPU build of \
                         ONNX Runtime — the onnxruntime-gpu wheel, through ORT_DYLIB_PATH — its CUDA libraries and \
                         a GPU are needed; or set device = \"cpu\" or \"auto\")"
                    ),
                    ort::Error::<()>::from(e),
                )
            })?
        }
        Device::Cpu | Device::Auto if options.cpu_arena => builder,
        Device::Cpu | Device::Auto => builder
            .with_execution_providers([cpu()])
            .map_err(ort::Error::<()>::from)
            .map_err(|e| failed("ONNX Runtime cannot set the CPU provider".into(), e))?,
    };
    let mut builder = match options.cpu_arena {
        true => builder,
        false => builder
            .with_memory_pattern(false)
            .map_err(ort::Error::<()>::from)
            .map_err(|e| failed("ONNX Runtime cannot turn memory patterns off".into(), e))?,
    };
    builder.commit_from_file(onnx).map_err(|e| {
        let on = if device == Device::Cuda { format!(" with the {CUDA_PROVIDER}") } else { String::new() };
        failed(format!("ONNX Runtime cannot open the graph{on}"), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_from_the_config_and_the_environment() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!(" CUDA ".parse::<Device>(), Ok(Device::Cuda));
        assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
        assert!("tpu".parse::<Device>().unwrap_err().contains("cpu, cuda or auto"));
        #[derive(Deserialize)]
        struct T {
            device: Device,
        }
        assert_eq!(toml::from_str::<T>("device = 'auto'").unwrap().device, Device::Auto);
        assert!(toml::from_str::<T>("device = 'gpu0'").is_err());
        assert_eq!(Device::default(), Device::Cpu);
    }
}
