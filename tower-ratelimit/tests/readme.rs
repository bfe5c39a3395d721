//! The README is the front page on GitHub, where rustdoc's hidden lines (`# `) would show: its
//! Rust blocks are complete programs, compiled as doctests of this crate (see `lib.rs`).

const README: &str = include_str!("../../README.md");

/// The Rust code blocks of the README, each with its fence's info string.
fn rust_blocks() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut blocks = Vec::new();
    let mut lines = README.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        if info.starts_with("rust") {
            blocks.push((info, body));
        }
    }
    blocks
}

#[test]
fn rust_blocks_are_whole_programs_without_hidden_lines() {
    let blocks = rust_blocks();
    assert!(blocks.len() >= 3, "the served app, Redis and the proxy");
    for (info, body) in &blocks {
        assert!(
            matches!(*info, "rust" | "rust,no_run"),
            "a README block rustdoc would not compile: {info}"
        );
        for line in body {
            let hidden = line.trim_start() == "#" || line.trim_start().starts_with("# ");
            assert!(!hidden, "a hidden line shows on GitHub: {line:?}");
        }
        assert!(
            body.iter()
                .any(|l| l.starts_with("fn main") || l.starts_with("async fn main")),
            "a block without its main is not a complete program: {body:?}"
        );
    }
}

#[test]
fn the_served_app_uses_connect_info_and_only_this_crate() {
    let served = &rust_blocks()[0].1;
    assert!(
        served
            .iter()
            .any(|l| l.contains("into_make_service_with_connect_info"))
    );
    for (_, body) in rust_blocks() {
        assert!(!body.iter().any(|l| l.contains("rate_limit_core")));
    }
}

#[test]
fn the_readme_is_a_front_page() {
    let lines = README.lines().count();
    assert!(lines <= 210, "README.md has {lines} lines");
    assert!(README.contains("cargo test --workspace --all-features"));
    assert!(README.contains("cargo run --example demo"));
}
