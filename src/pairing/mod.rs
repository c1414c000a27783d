//! Pairing a user's agent with a cluster: the client side of `mesh_pair`
//! (`client`), and the operator's side: the ledger of pairing tokens and the
//! answers a controller gives from it (`ledger`, `operator`).

pub mod client;
pub mod ledger;
pub mod legacy;
pub mod operator;

#[cfg(test)]
mod tests;
