//! `sessionfold-e2e`: the end-to-end tests (`tests/e2e/`) run the
//! `sessionfold` binary's services as child processes against real servers
//! and talk to them as producers and readers do. The crate depends on no
//! service it runs and not on the binary's package (`cli/`), whose build
//! `cargo test --workspace` makes for that package's own tests.
//!
//! Its unit tests check the workspace as a whole: `layering` keeps the crate
//! graph layered and the README's picture of it true, `design_references`
//! that every reference into docs/design.md names a section it has.

#[cfg(test)]
mod design_references;
#[cfg(test)]
mod layering;
