//! `sessionfold-e2e`: the end-to-end tests (`tests/e2e/`) run the
//! `sessionfold` binary's services as child processes against real servers
//! and talk to them as producers and readers do. The crate depends on no
//! service it runs and not on the binary's package (`cli/`), whose build
//! `cargo test --workspace` makes for that package's own tests.
//!
//! Its one unit test, [`layering`], keeps the crate graph layered and the
//! README's picture of it true.

#[cfg(test)]
mod layering;
