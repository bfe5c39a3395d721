//! The demo server behind `cargo run --example demo`: its configuration, store, routes and
//! server loop, kept in the library so that they are unit-tested.
//!
//! See [`routes`] for the endpoints and the [configuration](config) for the settings.

pub mod client;
pub mod config;
pub mod routes;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::{StartError, serve};
