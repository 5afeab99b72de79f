//! Dynamic fan-out (`map`): expanding a mapped node into items when it is about to run,
//! telling items from nodes, and collecting the items' outputs into the node's once the
//! scheduler says they have all ended.

use std::borrow::Cow;
use std::sync::Arc;

use dagengine_core::{Instruction, NodeIdx, NodeState, Scheduler};
use serde_json::Value;

use super::super::condition::DriverExpression;
use super::super::model::{EventDetail, EventKind, MapSpec, NodeFailure, NodeRecord};
use super::{unix_now, Driver};

/// The items of one expanded node: indices `first..first + items.len()`.
pub(super) struct Expanded {
    pub(super) first: NodeIdx,
    pub(super) node: NodeIdx,
    pub(super) items: Vec<Arc<Value>>,
}

impl Driver {
    /// For an item of a mapped node, its expansion and its index there.
    pub(super) fn item_of(&self, idx: NodeIdx) -> Option<(&Expanded, u32)> {
        if (idx as usize) < self.plan.dag.len() {
            return None;
        }
        let m = self
            .expanded
            .partition_point(|e| e.first <= idx)
            .checked_sub(1)?;
        let e = &self.expanded[m];
        Some((e, idx - e.first))
    }

    /// The node of the graph `idx` is, or whose item it is.
    pub(super) fn owner(&self, idx: NodeIdx) -> NodeIdx {
        self.item_of(idx).map_or(idx, |(e, _)| e.node)
    }

    /// The id of a node or an item (`square[3]`).
    pub(super) fn node_id(&self, idx: NodeIdx) -> Cow<'_, str> {
        match self.item_of(idx) {
            Some((e, i)) => Cow::Owned(format!("{}[{i}]", self.plan.dag.id(e.node))),
            None => Cow::Borrowed(self.plan.dag.id(idx)),
        }
    }

    /// An item's index and value, for its call.
    pub(super) fn item_call(&self, idx: NodeIdx) -> Option<(u32, Arc<Value>)> {
        self.item_of(idx)
            .map(|(e, i)| (i, e.items[i as usize].clone()))
    }

    /// Attempt `attempt` of the mapped `node` starts (its condition held): announce it,
    /// evaluate its list and expand it into one item per element. A list that is not an
    /// array, or is longer than the node's limit, fails the node (not retryably).
    pub(super) fn expand(
        &mut self,
        sched: &mut Scheduler<'_>,
        out: &mut Vec<Instruction>,
        node: NodeIdx,
        attempt: u32,
        now: f64,
    ) {
        let map = self.plan.map(node).expect("a mapped node").clone();
        self.announce(node, attempt, now);
        let items = match self.map_items(node, &map) {
            Ok(items) => items,
            Err(failure) => {
                self.finish_attempt(sched, out, node, attempt, Err(failure), Vec::new());
                return;
            }
        };
        let count = items.len() as u32;
        let first = sched.len();
        let record = NodeRecord {
            status: NodeState::Pending,
            output: None,
            error: None,
            attempts: 0,
            skip_reason: None,
            cache: None,
            started_at: None,
            finished_at: None,
        };
        self.records.resize(first + items.len(), record);
        self.tokens.resize(first + items.len(), None);
        let mut completed = Vec::new();
        if !self.config.completed_items.is_empty() {
            for (n, i, output) in std::mem::take(&mut self.config.completed_items) {
                if n == node && i < count {
                    self.records[first + i as usize].output = Some(Arc::new(output));
                    completed.push(i);
                } else if n != node {
                    self.config.completed_items.push((n, i, output));
                }
            }
        }
        self.expanded.push(Expanded {
            first: first as NodeIdx,
            node,
            items: items.into_iter().map(Arc::new).collect(),
        });
        self.emit_at(
            now,
            EventKind::NodeMapped,
            Some(node),
            attempt,
            EventDetail::Mapped(count),
        );
        let expanded = sched.expand(node, attempt, count, map.options, &completed, out);
        debug_assert!(expanded.is_some(), "the node was running this attempt");
    }

    /// The list of a mapped node's items: its expression's value.
    fn map_items(&self, node: NodeIdx, map: &MapSpec) -> Result<Vec<Value>, NodeFailure> {
        let node_id = self.plan.dag.id(node);
        let value = match self.path_value(node, &map.expression) {
            Some(value) => value,
            None => self.lua_map_value(node, map)?,
        };
        let items = match value {
            Ok(Value::Array(items)) => items,
            // Lua has one table type: `{}` is the empty list too.
            Ok(Value::Object(o)) if o.is_empty() => Vec::new(),
            Ok(other) => return Err(not_a_list(node_id, &map.expression, &describe(&other))),
            Err(what) => return Err(not_a_list(node_id, &map.expression, &what)),
        };
        if items.len() > map.max_items as usize {
            return Err(NodeFailure::new(
                "ValueError",
                format!(
                    "node '{node_id}': map gives {} items, more than its limit of {} \
                     (max_items)",
                    items.len(),
                    map.max_items
                ),
                false,
            ));
        }
        Ok(items)
    }

    /// A plain path (`results.extract.rows`, `inputs.items`) read from the JSON itself,
    /// without a trip through Lua (a long list would be converted there and back);
    /// `None` for any other expression.
    fn path_value(&self, node: NodeIdx, expression: &str) -> Option<Result<Value, String>> {
        let mut parts = expression.trim().split('.');
        let root = parts.next()?;
        let keys: Vec<&str> = parts.collect();
        let plain = |k: &str| {
            k.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if keys.is_empty() || !keys.iter().all(|k| plain(k)) {
            return None;
        }
        let mut value: &Value = match root {
            "inputs" => &self.config.inputs,
            "results" => {
                let parent = self
                    .plan
                    .dag
                    .parents(node)
                    .iter()
                    .find(|&&p| self.plan.dag.id(p) == keys[0])?;
                let out = self.records[*parent as usize].output.as_ref()?;
                return Some(walk(out, &keys[1..]));
            }
            _ => return None,
        };
        for k in &keys {
            match value.get(k) {
                Some(v) => value = v,
                None => return Some(Err("nil".to_owned())),
            }
        }
        Some(Ok(value.clone()))
    }

    /// Evaluate a map expression in Lua, on the driver (like a condition).
    fn lua_map_value(
        &self,
        node: NodeIdx,
        map: &MapSpec,
    ) -> Result<Result<Value, String>, NodeFailure> {
        let results = if map.script.reads_results() {
            self.results_of(node)
        } else {
            Vec::new()
        };
        let call = DriverExpression {
            node,
            run_id: &self.run_id,
            inputs: &self.config.inputs,
            results: &results,
            node_timeout: self.plan.policies[self.policy_index(node)].timeout,
        };
        call.run(&self.plan, "map", |inputs, results, info, limits| {
            dagengine_lua::evaluate_json(
                &map.script,
                inputs,
                results,
                info,
                limits,
                Some(&self.shared.cancel),
            )
        })
    }

    /// The scheduler says every item of `node` has ended: record the node's output (the
    /// items' outputs in order, `null` for one that did not succeed) or its failure (the
    /// first failed item's), and announce it.
    pub(super) fn map_finished(&mut self, sched: &Scheduler<'_>, node: NodeIdx, failed: bool) {
        let Some(m) = self.expanded.iter().position(|e| e.node == node) else {
            return;
        };
        let (first, count) = (self.expanded[m].first, self.expanded[m].items.len() as u32);
        let now = unix_now();
        let attempt = self.records[node as usize].attempts;
        self.records[node as usize].finished_at = Some(now);
        if failed {
            let failure = (first..first + count)
                .find(|&i| sched.state(i) == NodeState::Failed)
                .and_then(|i| {
                    let f = self.records[i as usize].error.as_deref()?;
                    let mut f = f.clone();
                    f.message = format!("item {} failed: {}", i - first, f.message);
                    f.retryable = false;
                    Some(f)
                })
                .unwrap_or_else(|| NodeFailure::new("DagEngineError", "an item failed", false));
            self.records[node as usize].error = Some(Box::new(failure.clone()));
            self.first_failure.get_or_insert(node);
            self.emit_at(
                now,
                EventKind::NodeFailed,
                Some(node),
                attempt,
                EventDetail::Error(failure),
            );
            return;
        }
        let outputs: Vec<Value> = (first..first + count)
            .map(|i| match self.records[i as usize].output.take() {
                Some(out) if sched.state(i) == NodeState::Succeeded => {
                    Arc::try_unwrap(out).unwrap_or_else(|shared| (*shared).clone())
                }
                _ => Value::Null,
            })
            .collect();
        let output = Arc::new(Value::Array(outputs));
        self.records[node as usize].output = Some(output.clone());
        self.output_set(node);
        let detail = if self.config.event_outputs {
            EventDetail::Output(output)
        } else {
            EventDetail::None
        };
        self.emit_at(now, EventKind::NodeSucceeded, Some(node), attempt, detail);
    }
}

/// Read `keys` down from `value`: the value there, or `nil` when a key is missing.
fn walk(value: &Value, keys: &[&str]) -> Result<Value, String> {
    let mut v = value;
    for k in keys {
        match v.get(k) {
            Some(next) => v = next,
            None => return Err("nil".to_owned()),
        }
    }
    Ok(v.clone())
}

/// What a JSON value that is not a list is, as a Lua condition's value is described.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "a table with keys".to_owned(),
    }
}

fn not_a_list(node_id: &str, expression: &str, what: &str) -> NodeFailure {
    NodeFailure::new(
        "TypeError",
        format!("node '{node_id}': map must give an array, got {what} (from `{expression}`)"),
        false,
    )
}
