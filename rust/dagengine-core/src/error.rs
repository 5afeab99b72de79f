//! Errors of graph construction and validation, and the error kinds every crate reports.

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

/// The kind of an error, named as users see it: the `type` of a node's or a run's error
/// (`ErrorInfo.type` on the wire) and, for every kind but [`ErrorKind::EngineDraining`],
/// the class in `dagengine.exceptions` the Python bridge raises for it. The Lua crate, the
/// runner, the gRPC service and the bridge all name errors through this one table; the
/// strings are a contract and never change. (Errors raised by Python code keep the name
/// of their own class, so a node failure's kind is a string, not this enum.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    DagEngineError,
    ValidationError,
    CycleError,
    UnknownDependencyError,
    DuplicateNodeError,
    SelfDependencyError,
    LuaSyntaxError,
    LuaRuntimeError,
    LuaInstructionLimit,
    LuaMemoryLimit,
    LuaTimeout,
    LuaBadReturn,
    LuaConversionError,
    NodeTimeout,
    RunTimeout,
    RunCancelled,
    EngineRuntimeError,
    EngineStartError,
    EngineUnavailable,
    MessageTooLarge,
    /// A run's error when its engine was drained before it finished; the orchestrator
    /// reads it to run it again elsewhere. Never raised, so it has no exception class.
    EngineDraining,
}

impl ErrorKind {
    /// Every kind, in declaration order (`ALL[k as usize] == k`).
    pub const ALL: [ErrorKind; 21] = [
        ErrorKind::DagEngineError,
        ErrorKind::ValidationError,
        ErrorKind::CycleError,
        ErrorKind::UnknownDependencyError,
        ErrorKind::DuplicateNodeError,
        ErrorKind::SelfDependencyError,
        ErrorKind::LuaSyntaxError,
        ErrorKind::LuaRuntimeError,
        ErrorKind::LuaInstructionLimit,
        ErrorKind::LuaMemoryLimit,
        ErrorKind::LuaTimeout,
        ErrorKind::LuaBadReturn,
        ErrorKind::LuaConversionError,
        ErrorKind::NodeTimeout,
        ErrorKind::RunTimeout,
        ErrorKind::RunCancelled,
        ErrorKind::EngineRuntimeError,
        ErrorKind::EngineStartError,
        ErrorKind::EngineUnavailable,
        ErrorKind::MessageTooLarge,
        ErrorKind::EngineDraining,
    ];

    /// The kind's name: the error `type` users see, and its exception class's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::DagEngineError => "DagEngineError",
            ErrorKind::ValidationError => "ValidationError",
            ErrorKind::CycleError => "CycleError",
            ErrorKind::UnknownDependencyError => "UnknownDependencyError",
            ErrorKind::DuplicateNodeError => "DuplicateNodeError",
            ErrorKind::SelfDependencyError => "SelfDependencyError",
            ErrorKind::LuaSyntaxError => "LuaSyntaxError",
            ErrorKind::LuaRuntimeError => "LuaRuntimeError",
            ErrorKind::LuaInstructionLimit => "LuaInstructionLimit",
            ErrorKind::LuaMemoryLimit => "LuaMemoryLimit",
            ErrorKind::LuaTimeout => "LuaTimeout",
            ErrorKind::LuaBadReturn => "LuaBadReturn",
            ErrorKind::LuaConversionError => "LuaConversionError",
            ErrorKind::NodeTimeout => "NodeTimeout",
            ErrorKind::RunTimeout => "RunTimeout",
            ErrorKind::RunCancelled => "RunCancelled",
            ErrorKind::EngineRuntimeError => "EngineRuntimeError",
            ErrorKind::EngineStartError => "EngineStartError",
            ErrorKind::EngineUnavailable => "EngineUnavailable",
            ErrorKind::MessageTooLarge => "MessageTooLarge",
            ErrorKind::EngineDraining => "EngineDraining",
        }
    }

    /// Whether `dagengine.exceptions` has a class of this name (every kind but
    /// [`ErrorKind::EngineDraining`]).
    pub const fn has_exception_class(self) -> bool {
        !matches!(self, ErrorKind::EngineDraining)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    #[test]
    fn all_lists_every_kind_at_its_index_with_a_distinct_name() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?} is out of place in ALL");
        }
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert_eq!(ErrorKind::LuaTimeout.to_string(), "LuaTimeout");
    }
}
