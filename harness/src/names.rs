//! A run's [`RunNames`] as the [`Subjects`] and [`Keys`] its services use.

use sessionfold_core::{Keys, Subjects};
use sessionfold_testkit::RunNames;

/// The subjects of the services started with `names`' environment
/// ([`RunNames::env`]).
pub fn run_subjects(names: &RunNames) -> Subjects {
    Subjects {
        events_prefix: names.subject_prefix.clone(),
        dead_letters_prefix: names.dead_subject_prefix.clone(),
        updates_prefix: names.updates_subject_prefix.clone(),
    }
}

/// The keys of the services started with `names`' environment.
pub fn run_keys(names: &RunNames) -> Keys {
    Keys::new(names.key_prefix.as_str())
}
