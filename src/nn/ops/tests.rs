//! Tests of the CPU kernels against burn reference operations.
