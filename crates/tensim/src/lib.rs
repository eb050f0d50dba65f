//! # tensim — are these two networks computing the same thing?
//!
//! Tensor-network models (bilinear layers `D((Lx)∘(Rx))`, linear layers, residuals, biases) are
//! polynomials of their input. *Tensor similarity* compares two such models exactly, from the
//! weights alone, by contracting their tensor networks layer by layer (the Gram recursion of
//! MATH.md §3.3); it is invariant to the symmetries that leave the function unchanged.
//!
//! ```no_run
//! use std::path::Path;
//! let a = tensim::io::load(Path::new("a.safetensors"), Some(Path::new("arch.json")))?;
//! let b = tensim::io::load(Path::new("b.safetensors"), Some(Path::new("arch.json")))?;
//! let r = tensim::metrics::tensor::similarity(&a, &b, &Default::default())?;
//! println!("tensor similarity {:.6}", r.similarity);
//! # Ok::<(), tensim::Error>(())
//! ```

pub mod arch;
pub mod bench;
pub mod budget;
pub mod calibration;
pub mod demo;
pub mod distribution;
pub mod einsum;
pub mod error;
pub mod gram;
pub mod io;
pub mod layers;
pub mod layouts;
pub mod linalg;
pub mod metrics;
pub mod model;
pub mod moment;
pub mod montecarlo;
pub mod phases;
#[cfg(feature = "plot")]
pub mod plot;
pub mod propagate;
pub mod reparam;
pub mod scale;
pub mod trajectory;
pub mod wick;

pub use arch::Arch;
pub use error::{Error, Result};
pub use layers::{Bilinear, Layer, Linear};
pub use model::Model;
pub use rand;
