//! The demo server and examples of `tower-ratelimit`.
//!
//! The examples are in `examples/examples/`; run one with `cargo run --example <name>` from the
//! repository root. The demo server (`cargo run --example demo`) is built from the [`demo`]
//! module here, so that its configuration parsing and routes are unit-tested.

pub mod demo;
