//! Conditions (`when`): a Lua expression evaluated on the driver's thread, and the reading
//! of an external condition's answer. The driver decides when a condition is checked (before
//! a node's first attempt); this module only evaluates one.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dagengine_core::NodeIdx;
use dagengine_lua::{LuaLimits, LuaScript, NodeInfo};
use serde_json::Value;

use super::model::{contained, NodeFailure, Plan};

/// The most Lua instructions a `when` expression may take (tens of milliseconds).
pub const CONDITION_INSTRUCTIONS: u64 = 10_000_000;

/// A Lua expression the driver evaluates itself, on its own thread (a `when`, a `map`, a
/// cache `key`), with what it reads borrowed from the run.
pub(super) struct DriverExpression<'a> {
    pub(super) node: NodeIdx,
    pub(super) run_id: &'a str,
    /// The run's inputs: the `Arc` every node of the run shares, so that a Lua state shows
    /// them through the one read-only view it made for the run (not a view built anew for
    /// each expression: ~11,000 instructions more a `when` that reads them).
    pub(super) inputs: &'a Arc<Value>,
    /// The parents' outputs, if the expression can read them.
    pub(super) results: &'a [(NodeIdx, Arc<Value>)],
    /// The node's timeout, where it bounds the expression too.
    pub(super) node_timeout: Option<Duration>,
}

impl DriverExpression<'_> {
    /// Run `evaluate` (one of `dagengine_lua`'s evaluators, given the run's inputs, the
    /// parents' results by id, the node and the limits) once; an error fails the node (not
    /// retryably: a retry would not evaluate it again), named with `what` it was.
    pub(super) fn run<T>(
        &self,
        plan: &Plan,
        what: &str,
        evaluate: impl FnOnce(
            &Arc<Value>,
            &[(&str, &Value)],
            &NodeInfo<'_>,
            &LuaLimits,
        ) -> Result<T, dagengine_lua::LuaError>,
    ) -> Result<T, NodeFailure> {
        let node_id = plan.dag.id(self.node);
        let results: Vec<(&str, &Value)> = self
            .results
            .iter()
            .map(|(p, v)| (plan.dag.id(*p), v.as_ref()))
            .collect();
        let info = NodeInfo {
            node_id,
            run_id: self.run_id,
            attempt: 1,
        };
        // An instruction budget, not a wall-clock one, bounds an expression that loops: a
        // clock deadline costs the watchdog's bookkeeping (a third of a short condition's
        // time), the budget a hook every thousand instructions. A node timeout still applies.
        let limits = LuaLimits {
            max_instructions: Some(CONDITION_INSTRUCTIONS),
            timeout: self.node_timeout,
            ..LuaLimits::default()
        };
        contained(
            || node_id,
            || {
                evaluate(self.inputs, &results, &info, &limits).map_err(|e| {
                    NodeFailure::new(
                        e.kind().as_str(),
                        format!("node '{node_id}': {what}: {e}"),
                        false,
                    )
                })
            },
        )
    }

    /// The value of the node's Lua condition; anything but a boolean, or an error, fails
    /// the node.
    pub(super) fn condition(
        &self,
        plan: &Plan,
        script: &LuaScript,
        cancel: &AtomicBool,
    ) -> Result<bool, NodeFailure> {
        let value = self.run(plan, "when", |inputs, results, info, limits| {
            dagengine_lua::evaluate_bool(script, inputs, results, info, limits, Some(cancel))
        })?;
        value.map_err(|what| not_boolean(plan.dag.id(self.node), &what))
    }
}

fn not_boolean(node_id: &str, what: &str) -> NodeFailure {
    NodeFailure::new(
        "TypeError",
        format!("node '{node_id}': when must be a boolean, got {what}"),
        false,
    )
}

/// A condition's value as an external executor reported it (`{"when": <value>}`): a
/// boolean, or a failure of the node saying what it was instead.
pub fn condition_value(node_id: &str, value: Option<&Value>) -> Result<bool, NodeFailure> {
    let what = match value {
        Some(Value::Bool(b)) => return Ok(*b),
        None | Some(Value::Null) => "nil".to_owned(),
        Some(Value::Number(n)) => format!("a number ({n})"),
        Some(Value::String(s)) => format!("a string ({s:?})"),
        Some(Value::Array(_)) => "an array".to_owned(),
        Some(Value::Object(_)) => "a table".to_owned(),
    };
    Err(not_boolean(node_id, &what))
}
