//! Float32 kernels of a training step (the `--backend rust` path of the autograd ops).
//!
//! Each one has a NumPy twin in `apb_ref/ops/` that is its oracle: the same `Function` runs either,
//! so the NumPy code stays the readable reference.
//!
//! * `loss`: cross-entropy with label smoothing, forward and backward;
//! * `matmul`: the one call into the `gemm` crate (strided views, no threads of its own);
//! * `conv`: conv2d forward and both backward products, per image on NCHW arrays;
//! * `direct`: the stride-1 microkernels `conv` uses from the zero-padded image itself (no im2col);
//! * `elementwise`: ReLU and Hardtanh and their gradients, bit for bit as NumPy computes them;
//! * `norm`: batch normalisation forward and backward (statistics in f64, channels over threads);
//! * `optim`: SGD and Adam/AdamW steps in place, bit for bit as the NumPy steps;
//! * `pool`: max and average pooling, forward and backward, per plane;
//! * `quant`: DoReFa's activation quantizer and APB's weight quantizer, forward and backward;
//! * `vector`: plain loops compiled for the widest vectors the CPU has.

pub mod conv;
pub mod direct;
pub mod elementwise;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod quant;
mod vector;
