//! The domain types every layer of hexwatch shares, and nothing else: this
//! crate depends on no other crate of the workspace.
//!
//! - [`severity`] — how bad an alert is.
//! - [`document`] — a record as rules read it: one immutable JSON tree, parsed once.
//! - [`alert`] — an alert as stored and delivered, and the window that gathers
//!   a rule's matches into it.
//! - [`incident`] — alerts grouped as responders work them.

pub mod alert;
pub mod document;
pub mod incident;
pub mod severity;

pub use severity::Severity;
