//! Errors of graph construction and validation.

use thiserror::Error;

/// A graph that cannot be run. Every variant names the offending node(s).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GraphError {
    /// Two nodes share an id.
    #[error("duplicate node id '{node_id}'")]
    DuplicateNode { node_id: String },
    /// A node lists itself among its dependencies.
    #[error("node '{node_id}' depends on itself")]
    SelfDependency { node_id: String },
    /// A node depends on an id that no node has.
    #[error("node '{node_id}' depends on unknown node '{dependency}'")]
    UnknownDependency { node_id: String, dependency: String },
    /// The dependencies form a cycle; `path` starts and ends at the same node and follows
    /// execution order (`a -> b` means `b` depends on `a`).
    #[error("dependency cycle: {}", .path.join(" -> "))]
    Cycle { path: Vec<String> },
    /// Input that is malformed before it is a graph at all (bulk arrays of the wrong shape,
    /// more nodes than the index type holds).
    #[error("invalid graph input: {0}")]
    InvalidInput(String),
}
