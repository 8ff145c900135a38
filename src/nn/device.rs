//! Device selection and backend dispatch.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::NnError;
use super::ops::TrainBackend;

/// Where training runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    /// burn's Flex CPU backend.
    Cpu,
    /// burn's CUDA backend on GPU `n` (needs the `cuda` feature).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = NnError;

    /// Accepts `cpu`, `cuda` (= `cuda:0`) and `cuda:N`.
    fn from_str(s: &str) -> Result<Self, NnError> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| NnError::UnknownDevice(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Checks that the device can be used, without panicking.
    ///
    /// CPU is always available. CUDA needs the `cuda` feature; with it, a tiny
    /// tensor is sent to the GPU and read back. burn/cubecl panic when no driver
    /// or GPU exists, so the probe runs under `catch_unwind` and a panic becomes
    /// [`NnError::DeviceUnavailable`].
    pub fn available(&self) -> Result<(), NnError> {
        match self {
            DeviceSpec::Cpu => Ok(()),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(NnError::CudaNotCompiled),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(n) => cuda_probe(*n).map_err(|reason| NnError::DeviceUnavailable {
                device: self.to_string(),
                reason,
            }),
        }
    }
}

/// Runs a tiny computation on CUDA device `index`, once per process and device. The CUDA
/// runtime reports a missing driver or device by panicking (on its own threads too), so the
/// probe runs under `catch_unwind` with a panic hook that records the message instead of
/// printing a backtrace; the first message becomes the error's reason.
#[cfg(feature = "cuda")]
fn cuda_probe(index: usize) -> Result<(), String> {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;
    use burn::tensor::Tensor;

    use crate::panic_text::panic_text;

    static RESULTS: Mutex<BTreeMap<usize, Result<(), String>>> = Mutex::new(BTreeMap::new());
    static MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    let mut results = RESULTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = results.get(&index) {
        return r.clone();
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let msg = panic_text(info.payload()).unwrap_or_default();
        MESSAGES.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
    }));
    let probe = std::panic::catch_unwind(move || {
        let dev = CudaDevice::new(index);
        let t = Tensor::<Cuda, 1>::from_floats([1.0, 2.0], &dev);
        t.sum().into_scalar()
    });
    std::panic::set_hook(previous);
    let first = MESSAGES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .next();
    let result = match probe {
        Ok(3.0) => Ok(()),
        Ok(v) => Err(format!("probe computed 1 + 2 = {v}")),
        Err(payload) => {
            let msg = first
                .filter(|m| !m.is_empty())
                .or_else(|| panic_text(&*payload))
                .unwrap_or_else(|| "the CUDA runtime panicked while probing".into());
            // cudarc lists every library name it tried; the first clause says what matters.
            let short = msg
                .split(" - searched")
                .next()
                .unwrap_or(&msg)
                .trim()
                .to_string();
            Err(if short.contains("shared library") {
                format!(
                    "{short} (is the NVIDIA driver installed and libcuda.so on the library path?)"
                )
            } else {
                short
            })
        }
    };
    results.insert(index, result.clone());
    result
}

/// A computation generic over the autodiff backend, run by [`dispatch`].
/// (A trait rather than a closure because closures cannot be generic.)
pub trait BackendTask {
    type Output;
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Self::Output, NnError>;
}

/// Runs `task` on the backend for `dev`: `Autodiff<Flex>` for the CPU,
/// `Autodiff<Cuda>` for `cuda:N` (only with the `cuda` feature).
pub fn dispatch<T: BackendTask>(dev: &DeviceSpec, task: T) -> Result<T::Output, NnError> {
    match dev {
        DeviceSpec::Cpu => task
            .run::<burn::backend::Autodiff<burn::backend::Flex>>(burn::backend::flex::FlexDevice),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(NnError::CudaNotCompiled),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => {
            dev.available()?;
            task.run::<burn::backend::Autodiff<burn::backend::Cuda>>(
                burn::backend::cuda::CudaDevice::new(*n),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!(" CPU ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceSpec::Cpu.to_string(), "cpu");
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("`cpu`, `cuda` (= `cuda:0`) and `cuda:N`"), "{e}");
        }
    }

    #[test]
    fn cpu_is_available() {
        DeviceSpec::Cpu.available().unwrap();
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_how_to_rebuild() {
        let e = DeviceSpec::Cuda(0).available().unwrap_err();
        assert!(matches!(e, NnError::CudaNotCompiled));
        assert_eq!(
            e.to_string(),
            "pipe was built without CUDA support; rebuild with `cargo build --release --features cuda`"
        );
    }

    struct Echo;
    impl BackendTask for Echo {
        type Output = String;
        fn run<B: TrainBackend>(self, device: B::Device) -> Result<String, NnError> {
            Ok(format!("{device:?}"))
        }
    }

    #[test]
    fn dispatch_cpu() {
        assert_eq!(dispatch(&DeviceSpec::Cpu, Echo).unwrap(), "Cpu");
    }
}
