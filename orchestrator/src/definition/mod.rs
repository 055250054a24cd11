//! Saga definitions: the model, parsing with every breach reported at once, and the normalised
//! document (defaults filled in) that is stored and compared.
//!
//! This module is pure: no I/O. It must never accept a document that the machine cannot run.

mod model;
mod parse;

pub use model::*;
pub use parse::{Violation, parse_definition};
