//! What tool calls share: the one result renderer and argument parsing.

pub mod args;
pub mod offload_args;
pub mod render;
