//! End-to-end tests across the crates; see `tests/tests/`.
