//! The seeds' example sagas, as definitions and as workers written with the worker SDK:
//!
//! - [`order`]: reserve inventory → charge payment → create shipment → send the confirmation
//!   email (no compensation for the email; compensations for the rest);
//! - [`onboarding`]: MusicCorp's customer onboarding — create the customer → welcome email →
//!   first loyalty points;
//! - [`escrow`]: a house closing — open the escrow → buyer's and seller's signatures (in
//!   parallel, each with a deadline) → funds → transfer of title.
//!
//! Both read [`Knobs`] from the saga input, so that a saga can be told to fail a step, fail it
//! retryably a few times, or hang it past its timeout: every path of the orchestrator can be
//! shown with the same workers.

pub mod escrow;
pub mod knobs;
pub mod onboarding;
pub mod order;

pub use knobs::Knobs;
