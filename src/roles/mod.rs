//! Roles an engine can play besides a plain agent: the cluster side of
//! pairing (the operator's ledger) now; the controller and sandbox roles of
//! the local cluster build on it.

pub mod ledger;
